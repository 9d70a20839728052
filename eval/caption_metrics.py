"""METEOR and CIDEr of generated captions through pycocoevalcap, as GLaMM reports them.

GLaMM runs pycocoevalcap's ``COCOEvalCap``: the PTB tokenizer (Java), then each scorer. We call
the tokenizer, ``Meteor`` and ``Cider`` directly, which gives the same two numbers without
SPICE (SPICE fetches Stanford CoreNLP on first use, which cannot work offline).

Facts worth knowing when reading the numbers: CIDEr is CIDEr-D scaled by 10 and its
document frequencies come from the evaluated set itself, so a set of one image scores 0;
METEOR 1.5 needs ``java`` on PATH (Java 17 works).
"""

from __future__ import annotations

import contextlib
import io
import shutil
from collections.abc import Mapping


def caption_scores(references: Mapping[str, list[str]], candidates: Mapping[str, str]) -> dict[str, float]:
    """Corpus METEOR and CIDEr.

    Args:
        references: image id -> reference captions (GCG has one).
        candidates: image id -> the generated caption; same ids as ``references``.

    Returns:
        ``{"meteor": float, "cider": float}``.
    """
    if set(references) != set(candidates):
        raise ValueError("references and candidates must have the same ids")
    if not references:
        return {"meteor": float("nan"), "cider": float("nan")}
    if shutil.which("java") is None:
        raise RuntimeError("METEOR and the PTB tokenizer need 'java' on PATH (pycocoevalcap)")
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    # One tokenizer run (one JVM start) for references and candidates together. Empty captions
    # stay out of it: the tokenizer pairs output lines with ids by position, and an empty input
    # line would shift every caption after it.
    keys = list(references)
    both = {("ref", i, j): [{"caption": c}] for i, k in enumerate(keys) for j, c in enumerate(references[k]) if c.strip()}
    both.update({("cand", i, 0): [{"caption": candidates[k]}] for i, k in enumerate(keys) if candidates[k].strip()})
    tokenized = {}
    if both:
        with contextlib.redirect_stdout(io.StringIO()):
            tokenized = PTBTokenizer().tokenize(both)
    gts_tok = {k: [tokenized.get(("ref", i, j), [""])[0] for j in range(len(references[k]))] or [""]
               for i, k in enumerate(keys)}
    res_tok = {k: [tokenized.get(("cand", i, 0), [""])[0]] for i, k in enumerate(keys)}
    meteor = Meteor()
    try:
        meteor_score, _ = meteor.compute_score(gts_tok, res_tok)
    except ValueError as exc:  # the jar died: its stdout ended early
        raise RuntimeError(f"METEOR (java) failed: {exc}") from exc
    finally:
        _close_meteor(meteor)
    cider_score, _ = Cider().compute_score(gts_tok, res_tok)
    return {"meteor": float(meteor_score), "cider": float(cider_score)}


def _close_meteor(meteor) -> None:
    """Stop the METEOR java process now instead of at garbage collection."""
    proc = getattr(meteor, "meteor_p", None)
    if proc is None:
        return
    with contextlib.suppress(Exception):
        proc.stdin.close()
    with contextlib.suppress(Exception):
        proc.kill()
        proc.wait(timeout=10)
