"""The batch contract every part relies on (docs/design.md): the keys of a batch, the label
value that means "no target here", and the padding id of text. Data code builds batches with
these keys, the model reads them, and the trainers and FLOP counter pass them along."""

# The six model inputs, in the order of InterBertModel.forward.
INPUT_KEYS = ("input_ids", "token_type_ids", "text_mask", "region_features", "region_locations", "region_mask")
# The pretraining targets; mrm_soft_labels only where the store has class distributions.
LABEL_KEYS = ("msm_labels", "mrm_labels", "mrm_soft_labels", "itm_labels")
BATCH_KEYS = INPUT_KEYS + LABEL_KEYS
IGNORE_INDEX = -100  # a label with no target (torch's cross-entropy default)
PAD_ID = 0  # [PAD] in the BERT vocabularies
