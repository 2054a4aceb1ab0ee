"""The shipped checkpoint: it loads, it copies, and it generalises to twice its training length."""

import dmem
from dmem import pretrained
from dmem.cli import main
from dmem.training import evaluate


def test_ntm_copy_is_shipped_and_generalises_to_length_40():
    assert "ntm-copy" in pretrained.available()
    model = dmem.load(pretrained.path("ntm-copy"))
    assert isinstance(model, dmem.NTM)
    assert (model.config.memory_slots, model.config.word_size) == (128, 20)
    from dmem.tasks import Copy

    result = evaluate(model, Copy(bits=8, min_len=1, max_len=20), length=40, batches=2, batch_size=16)
    assert result["bit_errors"] <= 1.0
    result = evaluate(model, Copy(bits=8, min_len=1, max_len=20), length=20, batches=2, batch_size=16)
    assert result["cost_bits"] < 0.1


def test_cli_eval_and_plot_pretrained(tmp_path, capsys):
    assert main(["eval", "--pretrained", "ntm-copy", "--len", "40", "--batches", "1"]) == 0
    out = capsys.readouterr().out
    assert "ntm-copy" in out and "40" in out
    png = tmp_path / "access.png"
    assert main(["plot", "--pretrained", "ntm-copy", "--len", "12", "-o", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unknown_pretrained_name_lists_the_available_ones(capsys):
    assert main(["eval", "--pretrained", "nope", "--len", "10"]) == 1
    err = capsys.readouterr().err
    assert "ntm-copy" in err
