"""The training side: data loading, the Ray Train loop, evaluation, export.

Public API: :mod:`streamcell.trainer.api` (``TrainSettings``,
``load_long_frame``, ``train_local``, ``train_with_ray``,
``train_with_ray_data``, ``export``). The
modules, one job each: ``settings`` (the frozen knobs), ``data`` (read and
validate long-format tables), ``kafka_replay`` (``kafka://TOPIC``),
``prepare`` (serving-identical normalisation), ``loop`` (stateful TBPTT and
early stopping, a plain function), ``evaluate`` (online one-step validation),
``ray_train`` (Ray Train around the loop), ``ray_data`` (Parquet as a Ray
Dataset of whole streams), ``dataset_plan`` (prepare's statistics from
distributed passes), ``stream_store`` (a worker's streams on its disk),
``dataset_train`` (Ray Train on a Ray Dataset), ``cli`` (``streamcell train``),
``synthetic`` (series with known structure), ``datasets`` (benchmark data).
"""
