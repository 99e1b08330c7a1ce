import torch

from mmit.data.collate import Collator
from mmit.data.samples import Conversation, Message
from mmit.data.tokenize import tokenize_conversation
from mmit.models.multimodal_lm import MultimodalLM
from mmit.training.loss import next_token_loss_sum


def _batch(tokenizer, convs):
    return Collator(tokenizer.pad_token_id)([tokenize_conversation(c, tokenizer, 512)[0] for c in convs])


CONVS = [
    Conversation("a", [Message("user", "What is 2 + 2?"), Message("assistant", "4")]),
    Conversation(
        "b",
        [
            Message("user", "Say yes"),
            Message("assistant", "yes yes yes yes"),
            Message("user", "again"),
            Message("assistant", "yes"),
        ],
    ),
]


def test_loss_matches_transformers_shifted_loss(tiny):
    """Same value as transformers' own shift-inside loss: labels are shifted exactly once."""
    model = MultimodalLM(tiny.model).eval()
    batch = _batch(tiny.tokenizer, CONVS)
    with torch.no_grad():
        ours = next_token_loss_sum(model(batch), batch.labels, model.output_head) / batch.num_label_tokens
        reference = tiny.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels).loss
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)


def test_accumulation_normalised_by_label_tokens(tiny):
    """Two micro-batches divided by the step's token count give the big batch's gradient."""
    model = MultimodalLM(tiny.model).train()
    tokenizer = tiny.tokenizer
    full = _batch(tokenizer, CONVS)

    def grads(batches):
        model.zero_grad()
        total = sum(b.num_label_tokens for b in batches)
        for b in batches:
            (next_token_loss_sum(model(b), b.labels, model.output_head) / total).backward()
        return [p.grad.clone() for p in model.parameters()]

    together = grads([full])
    split = grads([_batch(tokenizer, CONVS[:1]), _batch(tokenizer, CONVS[1:])])
    for g1, g2 in zip(together, split):
        torch.testing.assert_close(g1, g2, rtol=1e-4, atol=1e-6)
    model.zero_grad()


def test_per_turn_weighting_gives_every_answer_the_same_weight(tiny):
    """loss_weighting=turn: the mean over answers of each answer's mean token loss, by hand."""
    from mmit.data.samples import IGNORE_INDEX
    from mmit.training.loss import answer_turns, next_token_loss_per_row

    model = MultimodalLM(tiny.model).eval()
    batch = _batch(tiny.tokenizer, CONVS)
    assert answer_turns(batch.labels) == 3  # "4"; "yes yes yes yes" and "yes"
    with torch.no_grad():
        hidden = model(batch)
        per_turn = next_token_loss_sum(hidden, batch.labels, model.output_head, per_turn=True) / 3
        logits = model.output_head(hidden[:, :-1]).float()
        token_losses = torch.nn.functional.cross_entropy(
            logits.transpose(1, 2), batch.labels[:, 1:].clamp(min=0), reduction="none"
        )
    means = []
    for row, targets in enumerate(batch.labels[:, 1:].tolist()):
        span: list[float] = []
        for t, target in enumerate(targets + [IGNORE_INDEX]):
            if target != IGNORE_INDEX:
                span.append(float(token_losses[row, t]))
            elif span:
                means.append(sum(span) / len(span))
                span = []
    assert len(means) == 3
    torch.testing.assert_close(per_turn, torch.tensor(sum(means) / 3), rtol=1e-4, atol=1e-5)
    # the plain token mean weighs the four-word answer four times as much: the two differ
    with torch.no_grad():
        token_mean = next_token_loss_sum(hidden, batch.labels, model.output_head) / batch.num_label_tokens
        sums, counts = next_token_loss_per_row(hidden, batch.labels, model.output_head)
    assert abs(float(token_mean) - float(per_turn)) > 1e-3
    torch.testing.assert_close(sums.sum() / counts.sum(), token_mean)
