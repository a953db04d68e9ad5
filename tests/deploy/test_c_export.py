"""The C runtime computes the integer program's logits bit for bit, on the host and on an emulated Cortex-M4."""

import json
import platform
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch

from addernet.deploy import integer, quantized
from addernet.deploy.c_export import plan_arena, write_c_project
from addernet.data import CIFAR10DataModule, CIFAR100DataModule, MNISTDataModule
from addernet.errors import ConfigError
from addernet.experiments.deploy import PROGRAM_FILE
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


def one_layer_program(kind: str, c: int, h: int, w: int, k: int, stride: int, padding: int, o: int
                      ) -> tuple[integer.Program, torch.Tensor]:
    """A program of one window layer (random bytes and parameters) and a head, and 3 images: it is the largest
    layer, so the scratch the export sizes for it is exactly what the runtime may use."""
    g = torch.Generator().manual_seed(c * 1000 + k * 100 + o)
    ho, wo = ((n + 2 * padding - k) // stride + 1 for n in (h, w))
    grid = float(k * k * c * 64)  # sums of byte differences (or products) of about this size give codes in 0..255
    window = integer.Layer(kind, 0, 1, kernel=k, stride=stride, padding=padding, relu=True,
                           weight=torch.randint(0, 256, (o, k, k, c), generator=g, dtype=torch.uint8) if kind == "adder"
                           else torch.randint(-127, 128, (o, k, k, c), generator=g, dtype=torch.int8),
                           m=(torch.rand(o, generator=g) * 255 / grid).float(),
                           c=(torch.rand(o, generator=g) * 200 - 150).float())
    lut = integer.Layer("lut", -1, 0, weight=torch.randint(0, 256, (c, 256), generator=g, dtype=torch.uint8))
    head = integer.Layer("head", 1, -1, weight=torch.randint(-127, 128, (5, o), generator=g, dtype=torch.int8),
                         m=torch.full((5,), 1e-3), c=torch.zeros(5))
    maps = [integer.Map((c, h, w), 1.0, int(torch.randint(0, 256, (1,), generator=g))), integer.Map((o, ho, wo))]
    images = torch.randint(0, 256, (3, c, h, w), generator=g, dtype=torch.uint8)
    return integer.Program((c, h, w), maps, [lut, window, head], 5), images


# (kind, C, H, W, k, stride, padding, O): gathered windows (C not a multiple of 4) with an odd number of
# positions, so the last one runs alone; in place with rows of 36 and 12 bytes (not whole 16-byte blocks);
# stride 2 with an odd output width; a 1x1 stride-2 shortcut; LeNet's one-channel 5x5; the multiplicative stem;
# filters not a multiple of 4 throughout
ONE_LAYER_CASES = [("adder", 6, 5, 7, 3, 1, 1, 5), ("adder", 12, 6, 6, 3, 1, 1, 9), ("adder", 4, 9, 9, 3, 2, 1, 6),
                   ("adder", 16, 4, 4, 1, 2, 0, 8), ("adder", 1, 8, 8, 5, 1, 2, 3), ("conv", 3, 6, 6, 3, 1, 1, 6)]


def sanitizers_work(tmp_path) -> bool:
    """Whether the C compiler builds and runs a program with AddressSanitizer and UndefinedBehaviorSanitizer."""
    (tmp_path / "probe.c").write_text("int main(void) { return 0; }\n")
    built = subprocess.run(["cc", "-fsanitize=address,undefined", "-o", str(tmp_path / "probe"),
                            str(tmp_path / "probe.c")], capture_output=True)
    return built.returncode == 0 and subprocess.run([str(tmp_path / "probe")]).returncode == 0


@needs_cc
def test_every_kind_of_position_is_exact_and_stays_inside_the_scratch(tmp_path):
    """Built with AddressSanitizer (the arena, scratch and weights are static arrays, which it guards) and
    UndefinedBehaviorSanitizer; each case's layer is its program's largest, so a scratch sized too small for
    any of them fails here."""
    if not sanitizers_work(tmp_path):
        pytest.skip("the C compiler cannot build with -fsanitize=address,undefined (libasan, libubsan)")
    for case in ONE_LAYER_CASES:
        program, images = one_layer_program(*case)
        project = tmp_path / "_".join(map(str, case))
        build(program, project,
              "CFLAGS=-O1 -g -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer")
        result = subprocess.run([str(project / "addernet"), "-l"], input=hwc_bytes(images), capture_output=True)
        assert result.returncode == 0, (case, result.stderr.decode()[-3000:])
        assert_bit_identical(result.stdout.decode(), program, images)


@needs_cc
def test_a_truncated_input_is_one_line_with_status_2(tmp_path):
    program, images = program_of("adder_lenet5_bn", (1, 28, 28))
    build(program, tmp_path)
    result = subprocess.run([str(tmp_path / "addernet")], input=hwc_bytes(images)[:-1], capture_output=True)
    assert result.returncode == 2 and result.stdout.decode().count("\n") == 7  # the whole images were classified
    assert result.stderr.decode() == ("error: the input ends inside an image (783 of 784 bytes): it must hold whole "
                                      "28x28x1 uint8 HWC images\n")


needs_cross_tools = pytest.mark.skipif(
    not all(shutil.which(t) for t in CROSS_TOOLS),
    reason="the Cortex-M4 check needs arm-none-eabi-gcc (+ libnewlib-arm-none-eabi) and qemu-system-arm: "
           "apt-get install gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm")


def run_emulated(project, images: bytes) -> str:
    """What the project's Cortex-M4 program prints (-l) for the images, run by QEMU on the MPS2 AN386 board."""
    assert b"usada8" in subprocess.run(["arm-none-eabi-objdump", "-d", "addernet-cortex-m4.elf"], cwd=project,
                                       check=True, capture_output=True).stdout  # the DSP path was compiled
    (project / "images.bin").write_bytes(images)
    result = subprocess.run(["qemu-system-arm", "-M", "mps2-an386", "-nographic", "-semihosting-config",
                             "enable=on,target=native,arg=addernet,arg=-l,arg=images.bin", "-kernel",
                             "addernet-cortex-m4.elf"], cwd=project, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@needs_cross_tools
@pytest.mark.parametrize("name, shape", MODELS)
def test_the_cortex_m4_program_computes_the_same_logits_under_emulation(name, shape, tmp_path):
    program, images = program_of(name, shape)
    images = images[:2]  # emulation is slow
    build(program, tmp_path, "TARGET=cortex-m4")
    assert_bit_identical(run_emulated(tmp_path, hwc_bytes(images)), program, images)


@needs_cross_tools
def test_every_kind_of_position_is_exact_on_the_emulated_cortex_m4(tmp_path):
    """The usada8 assembly on the cases above: heads of single words, odd widths, lone positions."""
    for case in ONE_LAYER_CASES:
        program, images = one_layer_program(*case)
        project = tmp_path / "_".join(map(str, case))
        build(program, project, "TARGET=cortex-m4")
        assert_bit_identical(run_emulated(project, hwc_bytes(images)), program, images)


def test_the_program_file_runs_the_integer_program_and_refuses_images_not_made_of_bytes(tmp_path):
    """What src/eval.py and src/predict.py read for a C project: the integer program's logits, bit for bit; an
    edited file is refused in one line when it is read."""
    program, images = program_of("adder_lenet5_bn", (1, 28, 28))
    path = tmp_path / PROGRAM_FILE
    integer.save(program, path, class_names=None, mean=[0.5], std=[0.25], metadata={})
    deployed = quantized.load_exported(path)
    logits = deployed(deployed.normalize(images))
    assert torch.equal(logits.view(torch.int32), integer.run(program, images).view(torch.int32))
    with pytest.raises(ConfigError, match="the integer program reads uint8 images"):
        deployed(deployed.normalize(images) + 0.01)  # an augmented or differently normalised batch
    payload = torch.load(path, weights_only=True)
    payload["program"]["layers"][1]["kind"] = "adderr"
    torch.save(payload, path)
    with pytest.raises(ConfigError, match="the file was edited or damaged"):
        quantized.load_exported(path)


@pytest.mark.parametrize("data", [CIFAR10DataModule, CIFAR100DataModule, MNISTDataModule])
def test_every_pixel_comes_back_from_its_normalised_value(data, tmp_path):
    """The program file reads normalised images and turns them back into pixels: exactly, with each data
    module's own normalisation."""
    datamodule = data(root=str(tmp_path))
    pixels = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16).expand(1, len(data.mean), 16, 16)
    net = integer.IntegerNet(None, list(data.mean), list(data.std))  # no program: its pixels only
    assert torch.equal(net.pixels(datamodule.normalize(pixels)), pixels)


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
    net = create_model(name, num_classes=10).eval()
    with pytest.raises(ConfigError, match="format=c (exports|supports)"):
        integer.trace(net, (3, 32, 32))


@needs_cc
def test_export_writes_a_c_project_that_builds_and_reports_both_accuracies(tmp_path):
    """The command as a user runs it (a briefly trained network: the integer program's fidelity is tested
    above, and measured on a trained one in docs/deployment.md)."""
    from PIL import Image

    from addernet.experiments.deploy import predict
    from addernet.experiments.run import train
    from data_files import write_image_folders
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
    # the program file beside the project: the C program's logits, bit for bit, and src/eval.py's accuracy
    program_file = out / PROGRAM_FILE
    deployed = quantized.load_exported(program_file)
    images = torch.randint(0, 256, (5, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    from_c = subprocess.run([str(out / "addernet"), "-l"], input=hwc_bytes(images), check=True, capture_output=True)
    _, bits = logit_bits(from_c.stdout.decode())
    assert (bits == deployed(deployed.normalize(images)).numpy().view(np.uint32)).all()
    evaluated = run_script("eval.py", f"ckpt_path={program_file}", "trainer=cpu", *base[3:8],
                           f"hydra.run.dir={tmp_path / 'eval'}", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    evaluated_acc = json.loads((tmp_path / "eval" / "metrics.json").read_text())["test/acc"]
    assert evaluated_acc == pytest.approx(deployed.info["metadata"]["integer_test_acc"], abs=1e-9)
    assert 100 * evaluated_acc == pytest.approx(integer_acc, abs=0.005)  # the figure the export printed
    write_image_folders(tmp_path / "images", {"x": 1}, classes=("a", "b"), size=(8, 8))
    files = sorted(str(p) for p in (tmp_path / "images").rglob("*.png"))
    results, _ = predict(str(program_file), files)  # src/predict.py's classes
    pixels = torch.stack([torch.from_numpy(np.asarray(Image.open(f).convert("RGB"))).permute(2, 0, 1) for f in files])
    from_c = subprocess.run([str(out / "addernet")], input=hwc_bytes(pixels), check=True, capture_output=True)
    names = deployed.info["class_names"]
    assert [best[0][0] for _, best in results] == [names[int(c)] for c in from_c.stdout.decode().split()]
    again = run_script("export.py", f"ckpt_path={ckpt}", "format=c", f"out={out}", cwd=tmp_path)
    assert again.returncode == 2 and again.stderr.startswith(f"error: {out} exists: pass out=<another directory>")
    as_file = run_script("export.py", f"ckpt_path={ckpt}", "format=c", f"out={out / 'model.c'}", cwd=tmp_path)
    assert as_file.returncode == 2 and "is a file; format=c writes a directory" in as_file.stderr
