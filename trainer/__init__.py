"""The training side: data loading, the Ray Train loop, evaluation, export."""
