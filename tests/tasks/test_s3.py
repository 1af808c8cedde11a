"""The remote-URI path: pyarrow's real S3 client against an S3 API server on 127.0.0.1 (moto, the
`s3_server` fixture of tests/conftest.py)."""

from tasks.executor import read_marker, run_marked
from tasks.shards import MANIFEST, SUCCESS
from tasks.stage import ShardUnit, load_manifest, run_shard, stage_is_complete, write_manifest
from tasks.storage import resolve
from tasks.validate import check_part, check_stage_level
from tests.tasks.test_stage import make_spec, make_units


def test_stage_on_s3_writes_validates_and_skips(tmp_path, s3_server):
    spec = make_spec(f"{s3_server}/runs")
    units = make_units(tmp_path, files=2)
    receipts = [run_shard(spec, unit) for unit in units]

    def write_stage():  # run_stage's work, without Ray (its workers would not see the S3 server)
        return write_manifest(spec, units, receipts, wall_seconds=0.0)

    manifest = run_marked(spec.stage_dir, {"c4": spec.fingerprint()}, write_stage, lambda: load_manifest(spec))
    stage_dir = resolve(f"{s3_server}/runs/ingest")
    assert manifest["stage_dir"] == "s3://llamaline/runs/ingest"
    assert stage_dir.join(MANIFEST).exists() and stage_dir.join(SUCCESS).exists()
    assert [p.name for p in stage_dir.join("c4").list_files()] == ["part-00000.parquet", "part-00001.parquet"]
    assert all(check_part(stage_dir.uri, p).problems == [] for p in manifest["parts"])
    assert check_stage_level(stage_dir, manifest) == []
    assert stage_is_complete(spec, ["c4"]) and read_marker(stage_dir).fingerprints == {"c4": spec.fingerprint()}

    def must_not_run():
        raise AssertionError("a finished stage ran again")

    assert run_marked(spec.stage_dir, {"c4": spec.fingerprint()}, must_not_run, lambda: load_manifest(spec)) == manifest
    assert run_shard(spec, ShardUnit("c4", 0, units[0].input)) == receipts[0]  # receipt found: skipped
