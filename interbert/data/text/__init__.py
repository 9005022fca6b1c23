"""The caption side of the data: ``input_streams`` (opening a plain file, a pipe, stdin or a
compressed file), ``utf8`` (undecodable bytes named by file, line and column), ``manifests``
(caption JSON lines), ``tokenization`` (WordPiece once per corpus, as flat arrays) and
``caption_batch`` (a padded batch taken from those arrays)."""
