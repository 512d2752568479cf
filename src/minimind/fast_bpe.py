"""tiktoken as a faster engine for our byte-level BPE tokenizers, used only where the ids are provably equal.

Contract: `tiktoken_encoding(spec, split_pattern)` takes a parsed tokenizer.json and returns a
`tiktoken.Encoding` whose `encode_ordinary` / `encode_to_numpy(..., allowed_special=set(),
disallowed_special=())` give exactly the ids of that tokenizer's plain path (every added token
written in the text is text), or None: tiktoken not installed, or a tokenizer whose pipeline or
merges it cannot reproduce. Data preparation spends its time in BPE; tiktoken does the same work
4-5x faster than `tokenizers` on our Chinese/English prose (benchmarks/data_prepare.py).
"""

from __future__ import annotations


def tiktoken_encoding(spec: dict, split_pattern: str):
    """A tiktoken `Encoding` giving exactly the plain ids of the tokenizer `spec` (tokenizer.json), or None.

    tiktoken runs the same two steps as `tokenizers` here: split the text with the regex, then BPE
    on each piece's UTF-8 bytes. It is used only where each step provably agrees:
    - the split: no normalizer, and exactly `split_pattern` (tokenizer.SPLIT_PATTERN, the only
      pattern whose two regex engines, Oniguruma and Rust's, were compared: on every Unicode code
      point in 15 contexts; tests/test_prepare_speed.py keeps a dense sample) then a ByteLevel map.
    - the BPE: `tokenizers` applies the listed merge of lowest priority; tiktoken merges the adjacent
      pair whose concatenation has the lowest id. These agree when every token is either a byte or
      the result of one merge, merge results have increasing ids, and each merge (a, b) is the pair
      that id-ordered merging reaches on a+b (the rule transformers uses to turn tiktoken ranks into
      merges). All three are checked here; added tokens are left out, so they cannot be produced.
    """
    try:
        import tiktoken  # optional accelerator: without it, `tokenizers` does the work
    except ImportError:
        return None
    if not hasattr(tiktoken.Encoding, "encode_to_numpy"):  # tiktoken < 0.6
        return None
    model, pre = spec.get("model") or {}, spec.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers") if pre.get("type") == "Sequence" else None
    if spec.get("normalizer") or not steps or len(steps) != 2 or model.get("type") != "BPE":
        return None
    split, byte_level = steps
    if (split.get("type"), split.get("pattern"), split.get("behavior"), split.get("invert")) != \
            ("Split", {"Regex": split_pattern}, "Isolated", False):
        return None
    if (byte_level.get("type"), byte_level.get("use_regex"), byte_level.get("add_prefix_space")) != \
            ("ByteLevel", False, False):
        return None
    if any(model.get(k) for k in ("dropout", "continuing_subword_prefix", "end_of_word_suffix",
                                  "byte_fallback", "ignore_merges")):
        return None
    ranks = _merge_ranks(model, {a["id"] for a in spec.get("added_tokens", [])})
    if ranks is None or not spec.get("added_tokens"):
        return None  # (registering the added tokens keeps tiktoken's special-token scan cheap)
    to_byte = {ch: b for b, ch in _byte_symbols().items()}
    try:
        return tiktoken.Encoding("minimind", pat_str=split_pattern,
                                 mergeable_ranks={bytes(map(to_byte.__getitem__, t)): i for t, i in ranks.items()},
                                 special_tokens={a["content"]: a["id"] for a in spec["added_tokens"]})
    except ValueError:  # e.g. ids that tiktoken cannot hold
        return None


def _merge_ranks(model: dict, added: set[int]) -> dict[str, int] | None:
    """The BPE vocabulary as tiktoken ranks (byte-level symbols -> id), if id-ordered merging equals
    the merge list (see `tiktoken_encoding`); else None."""
    vocab: dict[str, int] = model.get("vocab") or {}
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model.get("merges") or []]
    if any(len(m) != 2 for m in merges):
        return None
    results = [a + b for a, b in merges]
    ids = [vocab.get(t, -1) for t in results]
    singles = set(_byte_symbols().values())
    ranks = {t: i for t, i in vocab.items() if i not in added}
    if (set(ranks) != singles | set(results) or len(ranks) != len(singles) + len(merges)
            or min(ids, default=0) < 0 or any(a >= b for a, b in zip(ids, ids[1:]))):
        return None
    for (a, b), t in zip(merges, results):
        parts, limit = list(t), ranks[t]
        while len(parts) > 2:  # id-ordered merging of t's symbols, below t's own id
            best = min(((ranks.get(x + y, limit), i) for i, (x, y) in enumerate(zip(parts, parts[1:]))))
            if best[0] >= limit:
                return None
            i = best[1]
            parts[i:i + 2] = [parts[i] + parts[i + 1]]
        if parts != [a, b]:
            return None
    return ranks


def _byte_symbols() -> dict[int, str]:
    """GPT-2's byte -> printable symbol table, the alphabet of `pre_tokenizers.ByteLevel`."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in keep}
    for n, b in enumerate(b for b in range(256) if b not in table):
        table[b] = chr(256 + n)
    return table
