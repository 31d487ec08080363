"""Sequence tagging: CoNLL/CoNLL-U files and tag schemes (:mod:`.conll`) and a BiLSTM-CRF
tagger with its vocabularies and batches (:mod:`.model`)."""

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
           "Vocab", "char_vocab", "load_embeddings", "make_batch", "tag_vocab", "word_vocab"]
