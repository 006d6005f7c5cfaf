import pytest

from gt_core.rho.sources import CallableRho, ConstantRho, RhoReading, RhoSource, ScheduleRho


def test_constant_rho_is_the_same_every_epoch():
    source = ConstantRho(0.5)
    assert isinstance(source, RhoSource)
    assert [source.rho_for(e, 0).rho for e in range(3)] == [0.5, 0.5, 0.5]
    assert source.rho_for(0, 0).source == "constant"


@pytest.mark.parametrize("bad", [0, -0.1, 1.01, float("nan"), "x", None])
def test_rho_outside_unit_interval_is_rejected(bad):
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        ConstantRho(bad)


def test_schedule_repeats_its_last_value():
    source = ScheduleRho([0.4, 0.7])
    assert [source.rho_for(e, 0).rho for e in range(4)] == [0.4, 0.7, 0.7, 0.7]
    assert source.rho_for(3, 0).detail == {"index": 1}
    with pytest.raises(ValueError):
        ScheduleRho([])
    with pytest.raises(ValueError, match="entry 1"):
        ScheduleRho([0.5, 1.5])


def test_schedule_from_json_and_text_files(tmp_path):
    json_file = tmp_path / "s.json"
    json_file.write_text("[0.5, 0.6]")
    assert ScheduleRho.from_file(json_file).values == [0.5, 0.6]
    text_file = tmp_path / "s.txt"
    text_file.write_text("# budget per epoch\n0.34\n\n0.9  # cleaner grid\n")
    assert ScheduleRho.from_file(text_file).values == [0.34, 0.9]
    bad = tmp_path / "bad.txt"
    bad.write_text("0.5\nhalf\n")
    with pytest.raises(ValueError, match=r"bad.txt:2: not a number"):
        ScheduleRho.from_file(bad)
    with pytest.raises(ValueError, match="cannot read"):
        ScheduleRho.from_file(tmp_path / "missing.json")


def test_callable_rho_is_validated():
    source = CallableRho(lambda epoch, step: 0.3 + 0.1 * epoch)
    assert source.rho_for(2, 10).rho == pytest.approx(0.5)
    with pytest.raises(ValueError):
        CallableRho(lambda e, s: 2.0).rho_for(0, 0)
    with pytest.raises(ValueError):
        RhoReading(0.0, "x")
