"""One error hierarchy for a user's mistakes: every error class the project raises for a bad
flag, file, config or data derives from interbert.errors.UserError, which each command reports as
one line with exit status 2 (tests/*/test_*errors* and the command tests check the lines)."""
from __future__ import annotations

import importlib

import pytest

from interbert.errors import UserError

USER_ERRORS = [
    "interbert.errors.UsageError",
    "interbert.training.ds_config.ConfigError",
    "interbert.training.monitor.MonitorSetupError",
    "interbert.training.precision.PrecisionError",
    "interbert.pretraining.data.CorpusError",
    "interbert.training.inputs.FeatureSizeError",
    "interbert.training.safe_load.UnsafeCheckpointError",
    "interbert.training.checkpoint_folder.CheckpointIncomplete",
    "interbert.finetuning.glue.GlueFormatError",
    "interbert.finetuning.settings.SettingsError",
    "interbert.finetuning.vcr.VcrFormatError",
    "interbert.finetuning.tasks.TaskInputError",
    "interbert.data.dataset_error.DatasetError",
    "interbert.data.text.manifests.ManifestError",
    "interbert.data.ingest.detections.ConversionError",
    "interbert.data.ingest.captions.CaptionFormatError",
    "interbert.data.text.tokenization.VocabularyError",
    "interbert.data.store.errors.FeatureStoreError",
    "interbert.data.store.errors.MissingImageError",
    "interbert.data.store.errors.CorruptRecordError",
    "interbert.data.store.errors.LegacyStoreError",
    "interbert.data.text.input_streams.InputError",
    "interbert.modeling.checkpoint_files.ModelFileError",
]


@pytest.mark.parametrize("name", USER_ERRORS)
def test_every_users_mistake_is_a_user_error(name):
    module, _, cls = name.rpartition(".")
    assert issubclass(getattr(importlib.import_module(module), cls), UserError)


def test_the_entry_points_report_user_errors_one_way():
    import interbert.finetuning.command
    import interbert.pretraining.command

    # one class, not one per entry point
    assert interbert.pretraining.command.UsageError is interbert.finetuning.command.UsageError
