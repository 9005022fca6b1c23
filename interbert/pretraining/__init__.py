"""Pretraining (paper §2.2): MSM + MRM + ITM, or Table 2's MLM + MOM + ITM baseline.

``command`` (the flags, the run's parts and the call into the loop; ``interbert/pretrain.py``
is the script the launcher runs), ``data`` (the training and validation loaders), ``objective``
(the loss and its sums for the loop, validation), ``console`` (the scalars and console line).
"""
