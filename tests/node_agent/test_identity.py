from __future__ import annotations

import stat

import pytest

from node_agent.identity import Identity, node_id_from_public_key, verify


def test_node_id_is_hash_of_public_key_and_signatures_verify() -> None:
    identity = Identity.generate()
    assert identity.node_id == node_id_from_public_key(identity.public_key_bytes)
    assert len(identity.node_id) == 20
    signature = identity.sign(b"hello")
    assert verify(identity.public_key_bytes, b"hello", signature)
    assert not verify(identity.public_key_bytes, b"hellO", signature)
    assert not verify(Identity.generate().public_key_bytes, b"hello", signature)


@pytest.mark.parametrize("public_key,signature", [(b"", b""), (b"x" * 32, b"y" * 64), (b"x" * 31, b"y" * 64)])
def test_verify_never_raises_on_garbage(public_key: bytes, signature: bytes) -> None:
    assert verify(public_key, b"data", signature) is False


def test_load_or_create_persists_with_mode_0600(tmp_path) -> None:
    path = tmp_path / "sub" / "identity.key"
    first = Identity.load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = Identity.load_or_create(path)
    assert again.node_id == first.node_id


def test_load_tightens_loose_permissions_and_rejects_corrupt_files(tmp_path) -> None:
    path = tmp_path / "identity.key"
    Identity.load_or_create(path)
    path.chmod(0o644)
    Identity.load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    path.write_bytes(b"short")
    with pytest.raises(ValueError, match="corrupt"):
        Identity.load_or_create(path)


def test_default_path_override_by_environment(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("COLEARN_IDENTITY", str(tmp_path / "k"))
    identity = Identity.load_or_create()
    assert (tmp_path / "k").read_bytes() == identity.private_bytes()
