"""The stream registry of fedopt.rng: one id per use, all distinct, all named there.

Two features drawing ``keyed_*``/``round_generator`` values on the same stream id with the same
coordinates share their random numbers (the local-training curriculum once shared stream 11 with
the decentralized graph builders, the client curriculum stream 12 with the event stream). These
tests read the source tree: every stream id lives in fedopt/rng.py, and no other module writes a
stream number.
"""
from __future__ import annotations

import re
from pathlib import Path

import fedopt.rng as rng

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("fedopt", "server", "client", "protocols", "simulations")
CALLS = re.compile(r"\b(keyed_bits|keyed_uniform|keyed_normal|keyed_gaussian|round_generator)"
                   r"\(\s*[^,()]+(?:\([^()]*\))?\s*,\s*([^,)\s]+)")


def _sources():
    for pkg in PACKAGES:
        for p in sorted((ROOT / pkg).rglob("*.py")):
            if p != ROOT / "fedopt" / "rng.py":
                yield p, p.read_text()


def test_registered_stream_ids_are_distinct():
    ids = list(rng.STREAMS.values())
    dup = {v: [k for k, w in rng.STREAMS.items() if w == v] for v in ids if ids.count(v) > 1}
    assert not dup, f"stream ids used twice: {dup}"
    assert len(rng.STREAMS) >= 20


def test_existing_stream_ids_keep_their_numbers():
    # renumbering one of these changes that feature's trajectories for the same seed
    assert {k: rng.STREAMS[k] for k in (
        "STREAM_SAMPLING", "STREAM_BATCHES", "STREAM_PROBES", "STREAM_CLOCK", "STREAM_GRAPH",
        "STREAM_EVENTS", "STREAM_WALK", "STREAM_ZO", "STREAM_CBO", "STREAM_FZOOS",
        "STREAM_PEERS", "STREAM_AIRCOMP", "STREAM_BURSTY", "STREAM_CODING", "STREAM_DELAYS",
        "STREAM_DP_CLIENT", "STREAM_DP_CENTRAL", "STREAM_DP_DIFF2", "STREAM_EVAL")} == {
        "STREAM_SAMPLING": 1, "STREAM_BATCHES": 2, "STREAM_PROBES": 3, "STREAM_CLOCK": 4,
        "STREAM_GRAPH": 11, "STREAM_EVENTS": 12, "STREAM_WALK": 13, "STREAM_ZO": 0x5A01,
        "STREAM_CBO": 0x5A02, "STREAM_FZOOS": 0x5A03, "STREAM_PEERS": 0x5A04,
        "STREAM_AIRCOMP": 0x5A05, "STREAM_BURSTY": 0x6742, "STREAM_CODING": 0x6743,
        "STREAM_DELAYS": 0x6744, "STREAM_DP_CLIENT": 0xD901, "STREAM_DP_CENTRAL": 0xD902,
        "STREAM_DP_DIFF2": 0xD903, "STREAM_EVAL": 0xE7A1}


def test_no_module_defines_a_stream_number():
    bad = []
    for p, text in _sources():
        for m in re.finditer(r"^\s*_?[A-Z0-9_]*STREAM[A-Z0-9_]*\s*(?::[^=]+)?=\s*(?!STREAM)", text,
                             re.M):
            bad.append(f"{p.relative_to(ROOT)}:{text[:m.start()].count(chr(10)) + 1}")
    assert not bad, f"stream ids defined outside fedopt/rng.py: {bad}"


def test_no_draw_passes_a_literal_or_unregistered_stream():
    bad, seen = [], 0
    for p, text in _sources():
        for m in CALLS.finditer(text):
            seen += 1
            arg = m.group(2)
            where = f"{p.relative_to(ROOT)}:{text[:m.start()].count(chr(10)) + 1}: {arg}"
            if re.fullmatch(r"-?(0x[0-9a-fA-F]+|\d+)", arg):
                bad.append(where)
            elif arg.startswith("STREAM_") and arg not in rng.STREAMS:
                bad.append(where)
    assert seen >= 20                   # the pattern does find the draws
    assert not bad, f"draws on a literal or unregistered stream: {bad}"


def test_default_rng_seeds_name_their_stream():
    bad = []
    for p, text in _sources():
        for m in re.finditer(r"default_rng\(\s*\[([^\]]*)\]", text, re.S):
            if not re.search(r"\bSTREAM_[A-Z0-9_]+", m.group(1)):
                bad.append(f"{p.relative_to(ROOT)}:{text[:m.start()].count(chr(10)) + 1}")
            else:
                for name in re.findall(r"\bSTREAM_[A-Z0-9_]+", m.group(1)):
                    if name not in rng.STREAMS:
                        bad.append(f"{p.relative_to(ROOT)}: {name}")
    assert not bad, f"default_rng seeded without a registered stream: {bad}"
