"""The suite runs offline (tests/conftest.py): a hub call fails at once, without touching the network."""

import socket

import datasets
import huggingface_hub
import pytest
import transformers
from huggingface_hub import constants
from huggingface_hub.errors import LocalEntryNotFoundError


@pytest.fixture()
def network_attempts(monkeypatch):
    """Records every name lookup and connection the code under test tries, and refuses them."""
    attempts = []

    def refuse(what):
        def refused(*args, **kwargs):
            attempts.append((what, args[1:] if what == "connect" else args))
            raise OSError(f"the test refused a network {what}")
        return refused

    monkeypatch.setattr(socket, "getaddrinfo", refuse("lookup"))
    monkeypatch.setattr(socket.socket, "connect", refuse("connect"))
    return attempts


def test_libraries_read_offline_mode():
    assert constants.HF_HUB_OFFLINE is True
    assert transformers.utils.hub.is_offline_mode()
    assert datasets.config.HF_HUB_OFFLINE and datasets.config.HF_DATASETS_OFFLINE


def test_hub_calls_fail_without_trying_the_network(network_attempts):
    with pytest.raises(LocalEntryNotFoundError):
        huggingface_hub.hf_hub_download("no-such-user/no-such-model", "config.json")
    with pytest.raises(OSError):
        transformers.AutoConfig.from_pretrained("no-such-user/no-such-model")
    with pytest.raises(OSError):
        transformers.AutoTokenizer.from_pretrained("no-such-user/no-such-model")
    assert network_attempts == []

