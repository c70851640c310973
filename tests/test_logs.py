"""Console progress line and the workdir log file."""

import io

from absl import logging

from mscad_jax import logs


def test_progress_line_on_a_pipe_writes_one_line_per_update():
    stream = io.StringIO()
    line = logs.ProgressLine("stage1", 200, start=100, stream=stream)
    text = line.update(150, loss=3.14159)
    line.update(200)
    assert text.startswith("stage1  150/200")
    assert "step/s" in text and "ETA" in text and "loss 3.142" in text
    out = stream.getvalue()
    assert "\r" not in out and out.count("\n") == 2


def test_log_file_gets_our_records_and_stops_when_closed(tmp_path):
    path = tmp_path / "log.txt"
    logs.setup_console()
    with logs.LogFile(str(path)):
        logging.info("inside %d", 1)
    logging.info("outside")
    text = path.read_text()
    assert "inside 1" in text and "outside" not in text


def test_log_file_disabled_writes_nothing(tmp_path):
    with logs.LogFile(str(tmp_path / "log.txt"), enabled=False):
        logging.info("x")
    assert not (tmp_path / "log.txt").exists()


def test_log_file_on_a_bucket_url_is_uploaded_and_continued_on_resume():
    import tensorflow as tf

    path = "ram://bucket/run_logs/log.txt"
    logging.set_verbosity(logging.INFO)
    with logs.LogFile(path):
        logging.info("first run")
    with logs.LogFile(path):
        logging.info("resumed run")
    with tf.io.gfile.GFile(path) as f:
        lines = f.read().splitlines()
    assert [line.rsplit(": ", 1)[1] for line in lines] == ["first run", "resumed run"]
