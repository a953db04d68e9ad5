"""The C runtime computes the integer program's logits bit for bit, on the host and on an emulated Cortex-M4."""

import platform
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch

from addernet.deploy import integer
from addernet.deploy.c_export import plan_arena, write_c_project
from addernet.models import create_model

CROSS_TOOLS = ("arm-none-eabi-gcc", "qemu-system-arm")
needs_cc = pytest.mark.skipif(not (shutil.which("cc") and shutil.which("make")), reason="no C compiler or make")


def program_of(name: str, shape: tuple[int, int, int], seed: int = 0,
               num_classes: int = 10) -> tuple[integer.Program, torch.Tensor]:
    """A calibrated integer program of an untrained network whose BatchNorm statistics are those of its
    inputs (so every map carries information), and 8 test images."""
    torch.manual_seed(seed)
    net = create_model(name, num_classes=num_classes, in_channels=shape[0])
    images = torch.randint(0, 256, (72, *shape), dtype=torch.uint8)
    mean, std = [0.5] * shape[0], [0.25] * shape[0]
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # a plain average over the batches seen
    with torch.no_grad():
        net.train()(((images.float() / 255) - 0.5) / 0.25)
    program = integer.trace(net.eval(), shape)
    integer.calibrate(program, images[:64], mean, std)
    return program, images[64:]


def hwc_bytes(images: torch.Tensor) -> bytes:
    return images.permute(0, 2, 3, 1).contiguous().numpy().tobytes()


def logit_bits(output: str) -> tuple[list[int], np.ndarray]:
    rows = [line.split() for line in output.splitlines() if line.strip()]
    return [int(r[0]) for r in rows], np.array([[int(v, 16) for v in r[1:]] for r in rows], dtype=np.uint32)


def assert_bit_identical(output: str, program: integer.Program, images: torch.Tensor) -> None:
    classes, bits = logit_bits(output)
    want = integer.run(program, images)
    assert bits.shape == (len(images), program.num_classes)
    assert (bits == want.numpy().view(np.uint32)).all(), "logits differ from integer.run"
    assert classes == want.argmax(1).tolist()


def build(program: integer.Program, out, *make_args: str) -> None:
    """Write the program's C project into ``out`` and build it with make (and its arguments)."""
    write_c_project(program, out)
    subprocess.run(["make", "-s", "-C", str(out), *make_args], check=True, capture_output=True)


MODELS = [("adder_lenet5_bn", (1, 28, 28)), ("adder_resnet20", (3, 32, 32))]


@needs_cc
@pytest.mark.parametrize("name, shape", MODELS)
def test_the_host_program_computes_the_integer_programs_logits_bit_for_bit(name, shape, tmp_path):
    program, images = program_of(name, shape)
    build(program, tmp_path)
    isa = subprocess.run([str(tmp_path / "addernet"), "-i"], input=b"", check=True, capture_output=True).stdout
    if platform.machine().lower() in ("x86_64", "amd64"):
        assert isa == b"sad: x86 sse2 psadbw\n"  # the SSE2 path is the one checked here
    (tmp_path / "images.bin").write_bytes(hwc_bytes(images))
    from_file = subprocess.run([str(tmp_path / "addernet"), "-l", "images.bin"], cwd=tmp_path, check=True,
                               capture_output=True, text=True)
    assert_bit_identical(from_file.stdout, program, images)
    from_stdin = subprocess.run([str(tmp_path / "addernet")], input=hwc_bytes(images), check=True,
                                capture_output=True)
    assert from_stdin.stdout.decode().split() == [str(c) for c in integer.run(program, images).argmax(1).tolist()]


@needs_cc
@pytest.mark.parametrize("name, shape, classes", [("adder_lenet5_bn", (1, 28, 28), 3),  # groups of < 4 filters
                                                  ("adder_resnet20", (3, 32, 32), 10)])
def test_the_portable_sum_of_absolute_differences_gives_the_same_logits(name, shape, classes, tmp_path):
    program, images = program_of(name, shape, num_classes=classes)
    images = images[:2]
    build(program, tmp_path, "CFLAGS=-O2 -DADDERNET_PORTABLE")
    (tmp_path / "images.bin").write_bytes(hwc_bytes(images))
    result = subprocess.run([str(tmp_path / "addernet"), "-i", "-l", "images.bin"], cwd=tmp_path, check=True,
                            capture_output=True, text=True)
    isa, output = result.stdout.split("\n", 1)
    assert isa == "sad: portable"
    assert_bit_identical(output, program, images)


def sanitizers_work(tmp_path) -> bool:
    """Whether the C compiler builds and runs a program with AddressSanitizer and UndefinedBehaviorSanitizer."""
    (tmp_path / "probe.c").write_text("int main(void) { return 0; }\n")
    built = subprocess.run(["cc", "-fsanitize=address,undefined", "-o", str(tmp_path / "probe"),
                            str(tmp_path / "probe.c")], capture_output=True)
    return built.returncode == 0 and subprocess.run([str(tmp_path / "probe")]).returncode == 0


@needs_cc
@pytest.mark.parametrize("name, shape, classes", [("adder_lenet5_bn", (1, 28, 28), 3),  # gathered windows
                                                  ("adder_resnet20", (3, 32, 32), 10)])  # in place, and gathered
def test_the_runtime_stays_inside_its_arena_and_scratch(name, shape, classes, tmp_path):
    """Built with AddressSanitizer (the arena, scratch and weights are static arrays, which it guards) and
    UndefinedBehaviorSanitizer: an export that sizes a buffer too small fails here, not by chance elsewhere."""
    if not sanitizers_work(tmp_path):
        pytest.skip("the C compiler cannot build with -fsanitize=address,undefined (libasan, libubsan)")
    program, images = program_of(name, shape, num_classes=classes)
    images = images[:3]  # an odd number of images, and LeNet's last positions alone
    build(program, tmp_path / "project",
          "CFLAGS=-O1 -g -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer")
    result = subprocess.run([str(tmp_path / "project" / "addernet"), "-l"], input=hwc_bytes(images),
                            capture_output=True)
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    assert_bit_identical(result.stdout.decode(), program, images)


@needs_cc
def test_a_truncated_input_is_one_line_with_status_2(tmp_path):
    program, images = program_of("adder_lenet5_bn", (1, 28, 28))
    build(program, tmp_path)
    result = subprocess.run([str(tmp_path / "addernet")], input=hwc_bytes(images)[:-1], capture_output=True)
    assert result.returncode == 2 and result.stdout.decode().count("\n") == 7  # the whole images were classified
    assert result.stderr.decode() == ("error: the input ends inside an image (783 of 784 bytes): it must hold whole "
                                      "28x28x1 uint8 HWC images\n")


@pytest.mark.skipif(not all(shutil.which(t) for t in CROSS_TOOLS),
                    reason="the Cortex-M4 check needs arm-none-eabi-gcc (+ libnewlib-arm-none-eabi) and "
                           "qemu-system-arm: apt-get install gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm")
@pytest.mark.parametrize("name, shape", MODELS)
def test_the_cortex_m4_program_computes_the_same_logits_under_emulation(name, shape, tmp_path):
    program, images = program_of(name, shape)
    images = images[:2]  # emulation is slow
    build(program, tmp_path, "TARGET=cortex-m4")
    assert b"usada8" in subprocess.run(["arm-none-eabi-objdump", "-d", "addernet-cortex-m4.elf"], cwd=tmp_path,
                                       check=True, capture_output=True).stdout  # the DSP path was compiled
    (tmp_path / "images.bin").write_bytes(hwc_bytes(images))
    result = subprocess.run(["qemu-system-arm", "-M", "mps2-an386", "-nographic", "-semihosting-config",
                             "enable=on,target=native,arg=addernet,arg=-l,arg=images.bin", "-kernel",
                             "addernet-cortex-m4.elf"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert_bit_identical(result.stdout, program, images)


def test_the_arena_never_overlaps_two_maps_that_are_needed_at_once():
    program, _ = program_of("adder_resnet20", (3, 32, 32))
    offsets, size = plan_arena(program)
    sizes = [c * h * w for c, h, w in (m.shape for m in program.maps)]
    for n, layer in enumerate(program.layers):  # what a layer reads and writes must not share bytes
        used = [i for i in (layer.src, layer.residual, layer.dst) if i is not None and i >= 0]
        spans = sorted((offsets[i], offsets[i] + sizes[i]) for i in set(used))
        assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:])), n
    assert max(o + s for o, s in zip(offsets, sizes)) <= size < sum(sizes) / 3  # far below one buffer per map


@pytest.mark.parametrize("seed", [0, 1])
def test_the_integer_program_follows_the_float_network(seed):
    program, images = program_of("adder_lenet5_bn", (1, 28, 28), seed)  # max-pooling: codes on the input's grid
    float_logits = integer._float_maps(program, images, [0.5], [0.25])[-1].flatten(1)
    logits = integer.run(program, images)
    assert (logits.argmax(1) == float_logits.argmax(1)).all()
    assert (logits - float_logits).abs().max() < 0.15 * float_logits.abs().max()


@pytest.mark.parametrize("name", ["adder_vgg_small", "adder_resnet18"])
def test_networks_the_runtime_cannot_run_are_refused_in_one_line(name):
    from addernet.errors import ConfigError

    net = create_model(name, num_classes=10).eval()
    with pytest.raises(ConfigError, match="format=c (exports|supports)"):
        integer.trace(net, (3, 32, 32))


@needs_cc
def test_export_writes_a_c_project_that_builds_and_reports_both_accuracies(tmp_path):
    """The command as a user runs it (a briefly trained network: the integer program's fidelity is tested
    above, and measured on a trained one in docs/deployment.md)."""
    from addernet.experiments.run import train
    from hydra_helpers import compose_config, run_script

    base = ["trainer=cpu", "logger=none", "run_name=test", "data=synthetic", "data.image_size=8",
            "data.train_size=128", "data.test_size=64", "data.batch_size=32", "trainer.max_epochs=1"]
    train(compose_config(base, tmp_path / "run"))
    ckpt, out = tmp_path / "run" / "checkpoints" / "last.ckpt", tmp_path / "adder_c"
    exported = run_script("export.py", f"ckpt_path={ckpt}", "format=c", f"out={out}", "calibration.images=64",
                          "batch_size=32", f"hydra.run.dir={tmp_path / 'export'}", cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr[-3000:]
    log = exported.stdout + exported.stderr
    float_acc, integer_acc = (float(v) for v in re.search(
        r"on 64 images: float ([0-9.]+)%, integer program \(what the C program computes\) ([0-9.]+)%", log).groups())
    assert abs(float_acc - integer_acc) <= 100 * 4 / 64, log[-2000:]  # at most 4 of 64 images change class
    subprocess.run(["make", "-s", "-C", str(out)], check=True, capture_output=True)
    again = run_script("export.py", f"ckpt_path={ckpt}", "format=c", f"out={out}", cwd=tmp_path)
    assert again.returncode == 2 and again.stderr.startswith(f"error: {out} exists: pass out=<another directory>")
    as_file = run_script("export.py", f"ckpt_path={ckpt}", "format=c", f"out={out / 'model.c'}", cwd=tmp_path)
    assert as_file.returncode == 2 and "is a file; format=c writes a directory" in as_file.stderr
