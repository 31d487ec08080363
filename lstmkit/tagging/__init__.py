"""Sequence tagging: CoNLL/CoNLL-U files and tag schemes (:mod:`.conll`), a BiLSTM-CRF
tagger with its vocabularies and batches (:mod:`.model`), and the built-in corpora read from
installed packages (:mod:`.corpora`)."""

from .conll import (
    ConllError,
    Sentence,
    chunks,
    convert,
    read_conll,
    read_conllu,
    to_bio,
    to_bioes,
    write_conll,
    write_conllu,
)
from .corpora import CORPORA, load_corpus, read_corpus
from .model import (
    Batch,
    EmbeddingError,
    Tagger,
    Vocab,
    char_vocab,
    load_embeddings,
    make_batch,
    tag_vocab,
    word_vocab,
)

__all__ = ["ConllError", "Sentence", "chunks", "convert", "read_conll", "read_conllu", "to_bio",
           "to_bioes", "write_conll", "write_conllu", "Batch", "EmbeddingError", "Tagger",
           "Vocab", "char_vocab", "load_embeddings", "make_batch", "tag_vocab", "word_vocab",
           "CORPORA", "load_corpus", "read_corpus"]
