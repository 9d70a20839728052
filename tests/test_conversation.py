import pytest

from segllm.conversation import (
    IGNORE_INDEX,
    SYSTEM_PROMPT,
    ConversationError,
    Turn,
    encode_conversation,
)
from segllm.tokenizer import special_token_ids

N_IMG = 16


def encode(tok, turns, **kw):
    return encode_conversation(turns, tok, special_token_ids(tok), N_IMG, sample="s1", **kw)


def test_template_and_labels(tiny_tokenizer):
    tok = tiny_tokenizer
    ids = special_token_ids(tok)
    turns = [Turn("Segment the red square.", "Sure, [SEG].", 1),
             Turn("Now the shape left of <ref:0>.", "[SEG] and [SEG].", 2)]
    enc = encode(tok, turns)
    assert enc.input_ids[0] == ids["bos"]
    assert enc.input_ids.count(ids["image"]) == N_IMG
    assert enc.input_ids.count(ids["seg"]) == 3
    # one crop+box slot pair per mask of the referenced round
    assert enc.input_ids.count(ids["mask_crop"]) == 1 == enc.input_ids.count(ids["mask_box"])
    assert enc.ref_slots == [(1, 0, 0)]
    assert enc.seg_targets == [(0, 0), (1, 0), (1, 1)]
    text = tok.decode(enc.input_ids).replace("<image>" * N_IMG, "<image>")
    assert text == ("<s>" + SYSTEM_PROMPT + " USER: <image>\nSegment the red square. ASSISTANT: "
                    "Sure, [SEG].</s>USER: Now the shape left of <mask_crop><mask_box>. "
                    "ASSISTANT: [SEG] and [SEG].</s>")
    # labels: exactly the answers and their </s>
    supervised = [t for t, lab in zip(enc.input_ids, enc.labels, strict=True) if lab != IGNORE_INDEX]
    assert tok.decode(supervised) == " Sure, [SEG].</s> [SEG] and [SEG].</s>"
    assert all(lab in (IGNORE_INDEX, t) for t, lab in zip(enc.input_ids, enc.labels, strict=True))
    assert set(enc.round_ids) == {0, 1} and len(enc.round_ids) == len(enc.input_ids)


def test_reference_to_a_ref_with_two_masks_expands_twice(tiny_tokenizer):
    ids = special_token_ids(tiny_tokenizer)
    turns = [Turn("Segment both circles.", "[SEG] and [SEG].", 2),
             Turn("Segment the shape between <ref:0>.", "[SEG].", 1)]
    enc = encode(tiny_tokenizer, turns)
    assert enc.ref_slots == [(1, 0, 0), (1, 0, 1)]
    assert enc.input_ids.count(ids["mask_crop"]) == 2


def test_truncation_drops_whole_trailing_rounds(tiny_tokenizer):
    turns = [Turn(f"Segment shape number {i}.", "Sure, [SEG].", 1) for i in range(6)]
    full = encode(tiny_tokenizer, turns)
    per_round = [full.round_ids.count(r) for r in range(6)]
    limit = sum(per_round[:3]) + 1 + per_round[3] // 2  # BOS + three rounds + half a round
    cut = encode(tiny_tokenizer, turns, max_length=limit)
    assert cut.num_rounds == 3 and cut.dropped_rounds == 3
    assert cut.input_ids == full.input_ids[:len(cut.input_ids)]
    assert cut.input_ids.count(special_token_ids(tiny_tokenizer)["seg"]) == 3
    assert cut.seg_targets == [(0, 0), (1, 0), (2, 0)]
    with pytest.raises(ConversationError, match="sample 's1' round 0: .* exceed max_length=20"):
        encode(tiny_tokenizer, turns, max_length=20)


@pytest.mark.parametrize("turns, message", [
    ([Turn("a", "Sure, [SEG].", 1), Turn("b <ref:1>", "[SEG].", 1)],
     r"sample 's1' round 1: <ref:1> refers to a round that does not exist yet"),
    ([Turn("a", "No such shape.", 0), Turn("b <ref:0>", "[SEG].", 1)],
     r"sample 's1' round 1: <ref:0> refers to round 0, which has no mask"),
    ([Turn("a", "Sure, [SEG] [SEG].", 1)],
     r"sample 's1' round 0: the answer has 2 \[SEG\] token\(s\) but the round has 1 target"),
    ([Turn("a", "Sure.", 0), Turn("  ", "x", 0)], r"sample 's1' round 1: the question is empty"),
    ([Turn("seg [SEG] it", "Sure.", 0)], r"round 0: the question may not contain '\[SEG\]'"),
])
def test_bad_conversations_name_sample_and_round(tiny_tokenizer, turns, message):
    with pytest.raises(ConversationError, match=message):
        encode(tiny_tokenizer, turns)


def test_generation_prompt_ends_after_assistant(tiny_tokenizer):
    turns = [Turn("Segment the square.", "Sure, [SEG].", 1), Turn("And <ref:0>?", None, 0)]
    enc = encode(tiny_tokenizer, turns, add_generation_prompt=True)
    assert tiny_tokenizer.decode(enc.input_ids[-6:]).endswith(" ASSISTANT:")
    assert enc.labels[-1] == IGNORE_INDEX
