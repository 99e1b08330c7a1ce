from dataclasses import dataclass

import pytest

from mmit.data.loader import BatchStream, DataChangedError, Prefetch


@dataclass
class Item:
    id: int
    input_ids: list


def _ids(batch):
    return [s.id for s in batch]


def test_each_epoch_covers_every_sample_once_and_reshuffles():
    data = [Item(i, [0] * (1 + i % 13)) for i in range(50)]
    for group in (0, 4):
        stream = BatchStream(data, 8, _ids, seed=1, group_by_length=group)
        epochs = [[i for _ in range(7) for i in next(stream)] for _ in range(2)]
        assert all(sorted(e) == list(range(50)) for e in epochs) and epochs[0] != epochs[1]


def test_grouping_by_length_cuts_padding():
    data = [Item(i, [0] * (5 + (i * 37) % 120)) for i in range(256)]

    def padding(group):
        stream = BatchStream(data, 8, lambda b: [len(s.input_ids) for s in b], seed=0, group_by_length=group)
        return sum(max(lengths) * len(lengths) - sum(lengths) for lengths in (next(stream) for _ in range(32)))

    assert padding(16) < 0.2 * padding(0)


def test_position_restores_the_same_batches():
    data = [Item(i, [0] * (1 + i % 9)) for i in range(40)]
    stream = BatchStream(data, 6, _ids, seed=3, group_by_length=2)
    reference = [next(stream) for _ in range(12)]
    first = BatchStream(data, 6, _ids, seed=3, group_by_length=2)
    head = [next(first) for _ in range(5)]
    resumed = BatchStream(data, 6, _ids, seed=3, group_by_length=2)
    resumed.load_state(first.state())
    assert head + [next(resumed) for _ in range(7)] == reference


class Fingerprinted(list):
    """Samples with a fingerprint of what they were made of, as a TokenizedDataset has."""

    def __init__(self, items, fingerprint):
        super().__init__(items)
        self.fingerprint = fingerprint


def test_a_position_is_refused_on_other_data():
    # A run resumed on edited data went on from a position in another order, without a word.
    data = [Item(i, [0] * (1 + i % 9)) for i in range(40)]
    first = BatchStream(Fingerprinted(data, "a"), 6, _ids, seed=3)
    next(first)
    state = first.state()
    assert state == {"epoch": 0, "index": 1, "samples": 40, "data": "a"}
    for other, said in (
        (Fingerprinted(data[:-1], "b"), "40 samples then, 39 now"),
        (Fingerprinted(data, "c"), "40 now, other contents"),
    ):
        with pytest.raises(DataChangedError, match=f"differ from those the checkpoint was trained on .*{said}"):
            BatchStream(other, 6, _ids, seed=3).load_state(state)
    older = BatchStream(Fingerprinted(data[:-1], "b"), 6, _ids, seed=3)
    older.load_state({"epoch": 0, "index": 1})  # a checkpoint written before the data were fingerprinted
    assert older.state()["index"] == 1


def test_a_fingerprint_is_of_the_conversations_not_of_their_chat_template():
    from mmit.data.datasets import conversations_fingerprint
    from mmit.data.samples import Conversation, Message

    def conv(answer):
        return Conversation("c1", [Message("user", "Colour?"), Message("assistant", answer)], {}, [])

    assert conversations_fingerprint([conv("red")]) == conversations_fingerprint([conv("red")])
    assert conversations_fingerprint([conv("red")]) != conversations_fingerprint([conv("blue")])


def test_prefetch_hands_out_the_same_batches_and_an_exact_position():
    data = [Item(i, [0] * (1 + i % 9)) for i in range(40)]
    plain = BatchStream(data, 6, _ids, seed=3)
    reference = [next(plain) for _ in range(9)]
    ahead = Prefetch(BatchStream(data, 6, _ids, seed=3), depth=3)
    head = [next(ahead) for _ in range(4)]
    assert head == reference[:4] and ahead.state() == {"epoch": 0, "index": 4}
    ahead.close()
    resumed = Prefetch(BatchStream(data, 6, _ids, seed=3), depth=3)
    resumed.load_state(ahead.state())
    assert head + [next(resumed) for _ in range(5)] == reference
    resumed.close()


def test_prefetch_raises_the_streams_error_in_the_consumer():
    def broken(batch):
        raise OSError("shard unreadable")

    ahead = Prefetch(BatchStream([Item(0, [1])], 1, broken), depth=2)
    with pytest.raises(OSError, match="shard unreadable"):
        next(ahead)


def test_a_process_left_without_rows_steps_on_a_stand_in_without_loss():
    from mmit.data.collate import Collator
    from mmit.data.samples import IGNORE_INDEX, TokenizedSample

    # 5 samples, 2 a process, 2 processes: the epoch's second global batch has one row only.
    data = [TokenizedSample(f"s{i}", [1 + i] * 6, [IGNORE_INDEX] * 3 + [1 + i] * 3) for i in range(5)]
    labelled, steps = {}, []
    for rank in (0, 1):
        stream = BatchStream(data, 2, Collator(0), seed=0, rank=rank, world_size=2)
        assert len(stream._batches()) == 2
        batches = [next(stream) for _ in range(2)]
        steps.append([b.num_label_tokens for b in batches])
        for batch in batches:
            assert batch.input_ids.shape[0] >= 1  # never an empty batch: every process runs the model
            for sample in batch.ids:
                labelled[sample] = labelled.get(sample, 0) + 1
            assert int((batch.labels != IGNORE_INDEX).sum()) == 3 * len(batch.ids)  # stand-ins carry none
    assert labelled == {f"s{i}": 1 for i in range(5)}  # every sample's loss counted once, none twice
    assert 0 in (steps[0][1], steps[1][1]) and steps[0][1] + steps[1][1] > 0


def _png(colour: tuple[int, int, int], size: int = 24) -> bytes:
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(out, format="PNG")
    return out.getvalue()


def _pixels(images):
    import numpy as np
    import torch

    return torch.stack([torch.from_numpy(np.asarray(im, dtype=np.float32)) for im in images])


def _image_samples(n: int, broken: int | None = None):
    from mmit.data.samples import IGNORE_INDEX, MediaRef, TokenizedSample

    samples = []
    for i in range(n):
        data = b"not an image" if i == broken else _png((i * 20 % 256, 7 * i % 256, 99))
        media = [MediaRef("image", "png", path=f"img{i}.png", data=data)]
        samples.append(TokenizedSample(f"s{i}", [5, 1 + i % 4] * (1 + i % 3), [IGNORE_INDEX, 2] * (1 + i % 3), media))
    return samples


def test_decode_workers_hand_out_the_same_batches_in_order_with_an_exact_position():
    import torch

    from mmit.data.collate import Collator, decode_pool

    data = _image_samples(23)
    collate = Collator(0, preprocess={"image": _pixels})
    reference = [next(s) for s in [BatchStream(data, 4, collate, seed=2, group_by_length=2)] for _ in range(9)]
    pool = decode_pool({"image": _pixels}, workers=2)
    try:
        ahead = Prefetch(BatchStream(data, 4, collate.with_pool(pool), seed=2, group_by_length=2), depth=3)
        head = [next(ahead) for _ in range(4)]
        assert ahead.state() == {"epoch": 0, "index": 4}
        ahead.close()
        resumed = Prefetch(BatchStream(data, 4, collate.with_pool(pool), seed=2, group_by_length=2), depth=3)
        resumed.load_state(ahead.state())
        batches = head + [next(resumed) for _ in range(5)]  # into the second epoch (6 batches an epoch)
        resumed.close()
    finally:
        pool.shutdown()
    for got, want in zip(batches, reference, strict=True):
        assert got.ids == want.ids and torch.equal(got.input_ids, want.input_ids)
        assert torch.equal(got.media["image"], want.media["image"])  # decoded in a worker, as in the thread


def test_a_decode_workers_error_reaches_the_consumer_naming_the_file():
    from mmit.data.collate import Collator, decode_pool

    pool = decode_pool({"image": _pixels}, workers=1)
    try:
        ahead = Prefetch(
            BatchStream(
                _image_samples(4, broken=2), 4, Collator(0, preprocess={"image": _pixels}, pool=pool), shuffle=False
            ),
            depth=2,
        )
        with pytest.raises(Exception, match="img2.png"):
            next(ahead)
        ahead.close()
    finally:
        pool.shutdown()


def test_decode_workers_on_a_platform_without_fork_say_what_to_set(monkeypatch):
    import multiprocessing

    from mmit.data.collate import decode_pool

    monkeypatch.setattr(multiprocessing, "get_all_start_methods", lambda: ["spawn"])
    with pytest.raises(ValueError, match=r"decode_workers=2 needs .*fork.*trainer\.decode_workers=0"):
        decode_pool({"image": _pixels}, workers=2)
