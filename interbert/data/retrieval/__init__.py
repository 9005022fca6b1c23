"""Evaluation input: ``corpus`` (``RetrievalCorpus``: the images of a split and their captions,
unmasked, paired in any combination), read by zero-shot and fine-tuned retrieval."""
