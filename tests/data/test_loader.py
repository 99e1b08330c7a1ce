from dataclasses import dataclass

from mmit.data.loader import BatchStream


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
