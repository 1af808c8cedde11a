"""Fixtures of the modeling tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors gain nothing from intra-op threads, and on a shared, busy machine OpenMP's
    spin-waiting turns milliseconds into seconds. Test modules use it with `pytestmark`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


CHAT_VOCAB = 600


@pytest.fixture(scope="session")
def chat_tokenizer(tmp_path_factory):
    """A 600-piece SentencePiece tokenizer of the synthetic instructions' text (its folder holds tokenizer.model)."""
    from tasks.synthetic.instructions import tokenizer_texts
    from tasks.tokenizer import train_tokenizer

    return train_tokenizer(tokenizer_texts(600), tmp_path_factory.mktemp("chat-spm"), vocab_size=CHAT_VOCAB)


@pytest.fixture(scope="session")
def chat_model_folder(tmp_path_factory, chat_tokenizer):
    """make(name, seed, max_seq_len=128): a seeded tiny random model of the chat tokenizer's
    vocabulary saved as a Hugging Face folder `name` with its tokenizer.model."""
    from modeling.checkpoints import save_hf
    from tasks.tokenizer import MODEL_FILE
    from tests.modeling.helpers import random_model, tiny_config

    root = tmp_path_factory.mktemp("chat-models")
    tokenizer_file = root / MODEL_FILE
    tokenizer_file.write_bytes(chat_tokenizer.model_proto)

    def make(name: str, seed: int, max_seq_len: int = 128):
        folder = root / name
        if not (folder / MODEL_FILE).is_file():
            save_hf(random_model(tiny_config(vocab_size=CHAT_VOCAB, max_seq_len=max_seq_len), seed=seed), folder,
                    tokenizer_files=[tokenizer_file])
        return folder

    return make

