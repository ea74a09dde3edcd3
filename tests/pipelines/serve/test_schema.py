"""The request rules of `imf serve` (which images a request means), its answers' encodings, and the application's
options: checked without Ray. What is refused and how it is said: test_api.py."""

import io
import json

import numpy as np
import pytest
from PIL import Image

from pipelines import cli
from pipelines.serve.responses import encode, headers
from pipelines.serve.schema import request_model

pytestmark = pytest.mark.timeout(120)


def rows(body, max_images=16):
    return request_model(max_images).model_validate(body).rows()


def test_image_k_is_seed_index_k_with_classes_cycled():
    r = rows({"class": [2, 0, 3], "seed": 7, "count": 5})
    assert (r["seeds"], r["indices"], r["classes"]) == ([7] * 5, [0, 1, 2, 3, 4], [2, 0, 3, 2, 0])
    r = rows({"class": "cat", "indices": [9, 4]})
    assert (r["seeds"], r["indices"], r["classes"]) == ([0, 0], [9, 4], ["cat", "cat"])
    r = rows({"class": [1, 2], "seeds": [5, 6], "indices": [3, 3], "omega": 2, "steps": 2, "format": "npz"})
    assert (r["seeds"], r["indices"], r["classes"]) == ([5, 6], [3, 3], [1, 2])
    assert r["guidance"] == {"omega": 2.0, "t_min": None, "t_max": None, "steps": 2}
    r = rows({"class": 1, "seeds": [4, 8, 15]})  # one image per seed, indices 0..n-1 as in the pyfunc
    assert (r["seeds"], r["indices"]) == ([4, 8, 15], [0, 1, 2])
    assert rows({"class": 0, "omega": None})["guidance"] == {"omega": None, "t_min": None, "t_max": None,
                                                             "steps": None}
    assert json.dumps(rows({"class": 0, "seed": 2**63 - 1})["seeds"]) == "[9223372036854775807]"
    r = rows({"class": [1.0], "count": 2.0, "seed": 3.0, "steps": 1.0})  # JSON Schema's integers: 2.0 is 2
    assert (r["classes"], r["seeds"], r["guidance"]["steps"]) == ([1, 1], [3, 3], 1)
    assert json.dumps(r) == json.dumps({**r, "classes": [1, 1], "seeds": [3, 3]})  # ints, not floats


def result(n):
    images = np.arange(n * 4 * 4 * 3, dtype=np.uint8).reshape(n, 4, 4, 3)
    return {"images": images, "labels": list(range(n)), "seeds": [7] * n, "indices": list(range(n)),
            "guidance": {"omega": 2.0}, "model_version": "m/3", "batch_requests": 2, "batch_images": 5}


def test_answers_in_each_format():
    one, five = result(1), result(5)
    body, media = encode(one, "png")
    assert media == "image/png" and np.array_equal(np.asarray(Image.open(io.BytesIO(body))), one["images"][0])
    grid = np.asarray(Image.open(io.BytesIO(encode(five, "png")[0])))
    assert grid.shape == (10, 16, 3)  # 3 columns, 2 rows, 2-pixel grey gaps, the empty tile grey
    assert np.array_equal(grid[6:10, 6:10], five["images"][4]) and (grid[6:10, 10:] == 128).all()
    saved = np.load(io.BytesIO(encode(five, "npz")[0]))
    assert np.array_equal(saved["arr_0"], five["images"]) and saved["indices"].tolist() == list(range(5))
    answer = json.loads(encode(five, "json")[0])
    assert answer["model_version"] == "m/3" and len(answer["images"]) == 5 and answer["batch"]["requests"] == 2
    assert headers(five) == {"X-IMF-Model-Version": "m/3", "X-IMF-Images": "5", "X-IMF-Batch-Requests": "2",
                             "X-IMF-Batch-Images": "5"}


def serve_spec(*flags):
    from pipelines.serve.server import ServeSpec

    return cli.spec_from_args(ServeSpec, cli.build_parser().parse_args(["serve", "--model", "models:/m@champion",
                                                                        *flags]))


def test_replicas_fixed_or_autoscaled_with_a_gpu_each_when_the_cluster_has_them():
    from pipelines.serve.app import generator_options

    spec = serve_spec("--num-replicas", "3")
    assert spec.host == "127.0.0.1" and spec.tracking_uri is None
    options = generator_options(spec, cluster_gpus=0)
    assert options["num_replicas"] == 3 and options["ray_actor_options"] == {"num_cpus": 1.0, "num_gpus": 0}
    assert options["max_ongoing_requests"] >= 2 * spec.max_batch_size  # room for a full batch and the next
    options = generator_options(serve_spec("--num-replicas", "auto", "--max-replicas", "8"), cluster_gpus=16)
    assert "num_replicas" not in options and options["ray_actor_options"]["num_gpus"] == 1
    assert options["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 8, "target_ongoing_requests": 2}
    options = generator_options(serve_spec("--num-replicas", "auto", "--upscale-delay-s", "2"), cluster_gpus=0)
    assert options["autoscaling_config"]["upscale_delay_s"] == 2.0
    assert generator_options(serve_spec("--gpus-per-replica", "0.5"), 8)["ray_actor_options"]["num_gpus"] == 0.5


@pytest.mark.parametrize("flags,message", [
    (["--max-images", "64", "--max-batch-size", "32"], "--max-images 64 is above --max-batch-size 32"),
    (["--num-replicas", "many"], "--num-replicas 'many'"),
    (["--num-replicas", "auto", "--min-replicas", "5", "--max-replicas", "2"], "--min-replicas 5"),
    (["--num-replicas", "auto", "--upscale-delay-s", "-1"], "--upscale-delay-s -1.0 must be >= 0"),
    (["--detach"], "--detach needs --address"),
    (["--port", "0"], "--port 0"),
])
def test_bad_flags_are_refused_before_ray_starts(flags, message):
    from pipelines.errors import UserError

    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        serve_spec(*flags).check()


def test_a_missing_model_is_an_error_before_ray_starts(tmp_path, capsys):
    assert cli.main(["serve", "--model", str(tmp_path / "nothing")]) == 2
    assert "not a model folder" in capsys.readouterr().err
    store = f"sqlite:///{tmp_path}/mlflow.db"
    assert cli.main(["serve", "--model", "models:/absent@champion", "--tracking-uri", store]) == 2
    assert "absent" in capsys.readouterr().err


def test_the_config_file_builder_refuses_unknown_args():
    from pipelines.errors import UserError
    from pipelines.serve.app import app_builder

    with pytest.raises(UserError, match="'port'"):
        app_builder({"model": "models:/m@champion", "port": 8000})
    with pytest.raises(UserError, match="without model"):
        app_builder({})
