"""Shared fixtures: one PKI per crypto suite and node set, made once per session.

``harness.build`` writes a PKI only into a directory that has no ``certs/``,
and node addresses depend only on the sorted node names, so every spec with
the same suite and the same names and roles can reuse one PKI directory.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from harness import Network, Spec, build, figure1_spec

PkiFor = Callable[[Spec], Path]
MakeNetwork = Callable[..., Network]


@pytest.fixture(scope="session")
def pki_for(tmp_path_factory: pytest.TempPathFactory) -> PkiFor:
    """Return a function that maps a spec to its shared PKI directory."""
    made: dict[tuple, Path] = {}

    def lookup(spec: Spec) -> Path:
        key = (spec.suite, tuple(sorted(spec.roles.items())))
        if key not in made:
            directory = tmp_path_factory.mktemp(f"pki-{spec.suite}")
            # building once writes the PKI, so later callers may copy it
            build(spec, directory)
            made[key] = directory
        return made[key]

    return lookup


@pytest.fixture
def network(pki_for: PkiFor) -> MakeNetwork:
    """Return a function that builds a network and lets the ACL upload finish.

    Call it with a :class:`Spec`, or with keyword changes to the Figure 1 spec.
    ``intercept`` is installed before the upload, so it gets every datagram.
    """

    def make(spec: Spec | None = None, intercept=None, **changes) -> Network:
        if spec is None:
            spec = figure1_spec(**changes)
        net = build(spec, pki_for(spec))
        net.intercept = intercept
        net.run()
        return net

    return make
