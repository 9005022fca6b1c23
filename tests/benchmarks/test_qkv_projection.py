"""benchmarks/qkv_projection.py at toy size: every way is timed per dtype and token count, beside its floor."""
import qkv_projection


def test_each_way_is_timed_beside_its_floor(capsys):
    assert qkv_projection.main(["--hidden", "64", "--tokens", "32,64", "--repeats", "2", "--threads", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = [line.split() for line in lines[2:]]
    assert [(row[0], row[1]) for row in rows] == [("fp32", "32"), ("fp32", "64"), ("bf16", "32"), ("bf16", "64")]
    for row in rows:
        three, fused, concatenated, floor = map(float, row[2:6])
        assert min(three, fused, concatenated) > 0 and floor > 0
        assert float(row[6].rstrip("x")) > 0  # fused / three, from the unrounded times
