"""bench/report.py: the ratio table of a pytest-benchmark run, and its compact copy."""

import importlib.util
import json
import pathlib

REPORT = pathlib.Path(__file__).resolve().parents[1] / "bench" / "report.py"


def load_report():
    spec = importlib.util.spec_from_file_location("dmem_bench_report", REPORT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bench(group, implementation, median, rounds=1000):
    data = [median] * rounds
    return {
        "group": group, "name": f"test_bench[{implementation}]",
        "extra_info": {"implementation": implementation, "num_threads": 2},
        "stats": {"min": median, "median": median, "mean": median, "max": median,
                  "rounds": rounds, "data": data},
    }


def test_compact_copy_keeps_the_statistics_and_drops_the_rounds(tmp_path, capsys):
    report = load_report()
    run = {
        "machine_info": {"cpu": {"brand_raw": "test CPU"}},
        "commit_info": {"id": "0123456789abcdef", "dirty": False},
        "datetime": "2026-12-04T08:00:00",
        "benchmarks": [bench("link fwd+bwd|B=16,N=128", "reference", 2e-3),
                       bench("link fwd+bwd|B=16,N=128", "compiled", 1e-4)],
    }
    path, out = tmp_path / "run.json", tmp_path / "small.json"
    path.write_text(json.dumps(run))
    assert report.main([str(path), "--compact", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| link fwd+bwd\\|B=16,N=128 | 2.00 ms | 100.0 µs | 20.0× |" in printed
    small = json.loads(out.read_text())
    assert out.stat().st_size < path.stat().st_size / 10
    for got, want in zip(small["benchmarks"], run["benchmarks"]):
        assert "data" not in got["stats"]
        assert {k: v for k, v in want["stats"].items() if k != "data"} == got["stats"]
        assert got["group"] == want["group"] and got["extra_info"] == want["extra_info"]
    # the compact copy is a run the report reads the same way
    assert report.main([str(out)]) == 0
    assert "20.0×" in capsys.readouterr().out
