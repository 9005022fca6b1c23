"""The synthetic corpora of the suite (`interbert data synth`: features/ and captions.jsonl), one
builder for every shape. tests/conftest.py synthesises each shape at most once per session, the
first time a test asks for it; the tests share it read-only."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CorpusShape:
    name: str
    images: int
    seed: int
    captions_per_image: int = 5
    val_images: int | None = None  # None: synth's default split sizes
    test_images: int | None = None


# The training, several-hosts, SLURM and evaluation runs: 40 images (32 train, 4 val, 4 test), 5 captions each.
TRAINING = CorpusShape("training", images=40, seed=0, val_images=4, test_images=4)
# The data tests: 60 images in synth's default splits (48 train, 6 val, 6 test), 5 captions each.
DATA = CorpusShape("data", images=60, seed=3)
# The fine-tuning and retrieval-scoring tests: 24 images (16 train, 4 val, 4 test), 3 captions each.
FINETUNING = CorpusShape("finetuning", images=24, seed=1, captions_per_image=3, val_images=4, test_images=4)


def synthesize(root: Path, shape: CorpusShape) -> Path:
    """Synthesise the corpus of `shape` into the new folder `root`; returns `root`."""
    from interbert.data.ingest.synth import synthesize_corpus

    synthesize_corpus(root, num_images=shape.images, seed=shape.seed, captions_per_image=shape.captions_per_image,
                      val_images=shape.val_images, test_images=shape.test_images, progress=False)
    return root
