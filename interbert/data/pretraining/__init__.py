"""Pretraining samples, built a whole batch at a time in the loader's workers: ``dataset``
(``PretrainingDataset``), ``tasks`` (``PretrainingTasks``: which tasks, at what rates),
``caption_pairs`` (the usable manifest lines), ``sample_draws`` (each sample's random draws, a pure
function of seed, epoch and index) and one file per task: ``msm`` (masked segment modeling, and
MLM), ``mrm`` (masked region modeling, and MOM), ``itm`` (image-text matching)."""
