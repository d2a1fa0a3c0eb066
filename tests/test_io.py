"""io.py: the Hadoop file system wrapper (the one user of Spark's JVM) and the feature readers."""

from __future__ import annotations

import gzip

import pytest
from pyspark.sql import types as T

from recsys_spark import io, schema
from recsys_spark.errors import InputError

pytestmark = pytest.mark.unit


def test_hadoop_fs_writes_atomically_lists_renames_and_reads_a_first_line(spark, tmp_path):
    root = f"file://{tmp_path}/store"
    fs = io.HadoopFs(spark, root)
    fs.write_bytes(f"{root}/a/day=1/part.csv", b"x,y\n1,2\n")
    fs.write_bytes(f"{root}/a/day=1/part.csv", b"user,item\n3,4\n")  # replaced in place
    fs.write_bytes(f"{root}/a/_SUCCESS", b"")
    fs.write_bytes(f"{root}/b.csv.gz", gzip.compress(b"\xef\xbb\xbfevent_time,event_type\nrow\n"))
    (tmp_path / "store" / ".hidden").write_text("skip me")

    files = [f.rsplit("/store/", 1)[1] for f in fs.files(root)]
    assert files == ["a/day=1/part.csv", "b.csv.gz"]  # markers, dot files and the temporary file skipped
    assert (tmp_path / "store" / "a" / "day=1" / "part.csv").read_bytes() == b"user,item\n3,4\n"
    assert fs.first_line(f"{root}/b.csv.gz") == "event_time,event_type"  # decompressed, BOM dropped
    assert fs.folders(f"{root}/a") == ["day=1"]
    fs.rename(f"{root}/a/day=1", f"{root}/moved/day=1")
    assert fs.exists(f"{root}/moved/day=1/part.csv") and not fs.exists(f"{root}/a/day=1")
    with pytest.raises(OSError, match="could not rename"):
        fs.rename(f"{root}/nothing-here", f"{root}/elsewhere")
    fs.delete(f"{root}/moved")
    assert not fs.exists(f"{root}/moved")
    assert fs.uri(f"{tmp_path}/with space.csv").endswith("with%20space.csv")


def test_each_feature_table_has_one_reader_that_names_the_key(spark, tmp_path):
    root = str(tmp_path / "features")
    with pytest.raises(InputError, match=r"features/user_split does not exist \(config key paths.features\)"):
        io.read_features(spark, root, "user_split")
    with pytest.raises(ValueError, match="no reader for feature table 'user_vocab'"):
        io.read_features(spark, root, "user_vocab")
    # A table that lost a column fails by name.
    wrong = T.StructType([f for f in schema.USER_SPLIT_SCHEMA.fields if f.name != schema.TEST_AT])
    spark.createDataFrame([], wrong).write.parquet(io.feature_path(root, "user_split"))
    with pytest.raises(InputError, match=f"lacks column\\(s\\) {schema.TEST_AT} \\(config key paths.features\\)"):
        io.read_features(spark, root, "user_split")
    with pytest.raises(InputError, match="metadata.json does not exist"):
        io.read_feature_metadata(spark, root)
    io.write_json(spark, io.feature_path(root, schema.FEATURE_METADATA), {"num_items": 7})
    assert io.read_feature_metadata(spark, root) == {"num_items": 7}


def test_local_uri_keeps_an_equals_sign_for_petastorm_and_encodes_a_space_for_pyarrow(tmp_path):
    import pyarrow as pa
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq
    from petastorm import make_batch_reader

    folder = tmp_path / "features" / "ds=2019-10-06" / "train"
    folder.mkdir(parents=True)
    pq.write_table(pa.table({"x": list(range(5))}), folder / "part-0.parquet")
    uri = io.local_uri(str(folder))
    assert uri == f"file://{folder}" and "%3D" not in uri
    with make_batch_reader(uri, num_epochs=1, workers_count=1) as reader:
        assert sum(len(batch.x) for batch in reader) == 5
    spaced = tmp_path / "a b"
    spaced.mkdir()
    assert pafs.FileSystem.from_uri(io.local_uri(str(spaced)))[1] == str(spaced)
