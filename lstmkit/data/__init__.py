"""Data sets for the ``lstmkit`` commands: text corpora for language models
(:mod:`.text`), synthetic long-time-lag tasks (:mod:`.synthetic`), time series for
forecasting (:mod:`.series`) and labelled sequences for classification (:mod:`.ucr`)."""

from . import grid_tasks  # noqa: F401  (registers the parity and addition tasks)
from .text import (
    Corpus,
    CorpusError,
    Vocabulary,
    default_corpus_files,
    read_corpus,
    split_by_position,
    stream_batches,
)

__all__ = ["Corpus", "CorpusError", "Vocabulary", "default_corpus_files", "read_corpus",
           "split_by_position", "stream_batches"]
