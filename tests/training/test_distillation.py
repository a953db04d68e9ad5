import pytest
import torch

from addernet.errors import ConfigError
from addernet.experiments.run import train
from hydra_helpers import compose_config

TINY = ["trainer=cpu", "logger=csv", "run_name=test", "data=synthetic", "data.train_size=64", "data.test_size=32",
        "data.image_size=8", "data.batch_size=16", "trainer.max_epochs=1"]


def agreement(a: torch.nn.Module, b: torch.nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return (a.eval()(x).argmax(1) == b.eval()(x).argmax(1)).float().mean().item()


def test_an_adder_network_learns_from_its_frozen_cnn_twin(tmp_path):
    """Distillation alone (distill.weight=1: no labels) moves the student toward its teacher: the KD loss falls
    from epoch to epoch, and the student agrees with the teacher on test images far more than before."""
    from addernet.data import SyntheticDataModule
    from addernet.experiments.report import read_curves
    from addernet.models import create_model
    from addernet.training.checkpoints import load_checkpoint_model

    train(compose_config(TINY + ["model=resnet20", "trainer.max_epochs=3"], tmp_path / "teacher"))
    teacher_ckpt = tmp_path / "teacher" / "checkpoints" / "last.ckpt"
    before = teacher_ckpt.read_bytes()
    metrics = train(compose_config(TINY + [f"distill.teacher_ckpt={teacher_ckpt}", "distill.weight=1.0",
                                           "trainer.max_epochs=4"], tmp_path / "student"))
    assert 0 <= metrics["teacher/val_acc"] <= 1 and teacher_ckpt.read_bytes() == before  # frozen, untouched
    kd = [v for _, v in read_curves(tmp_path / "student")["train/kd_loss"]]
    assert len(kd) == 4 and kd[-1] < 0.7 * kd[0], kd
    data = SyntheticDataModule(image_size=8, train_size=64, test_size=32, batch_size=32)
    data.setup()
    x = data.normalize(data.splits["test"].tensors[0])
    teacher = load_checkpoint_model(teacher_ckpt)[0].net
    student = load_checkpoint_model(tmp_path / "student" / "checkpoints" / "last.ckpt")[0].net
    torch.manual_seed(42)
    untrained = create_model("adder_resnet20", num_classes=10)
    assert agreement(student, teacher, x) >= agreement(untrained, teacher, x) + 0.3
    saved = torch.load(tmp_path / "student" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert not any("teacher" in key for key in saved["state_dict"])  # not part of the student's checkpoint


def test_distillation_loss_is_the_tempered_kl_divergence():
    from addernet.training.classifier import ImageClassifier
    from addernet.models import create_model

    module = ImageClassifier(create_model("resnet20", num_classes=3), optimizer=None,
                             teacher=create_model("resnet20", num_classes=3), kd_temperature=2.0)
    s, t = torch.tensor([[1.0, 2.0, 0.5]]), torch.tensor([[0.5, 0.1, 2.0]])
    p, q = torch.softmax(t / 2, 1), torch.softmax(s / 2, 1)
    assert module.distillation_loss(s, t).item() == pytest.approx(4 * (p * (p / q).log()).sum().item(), rel=1e-5)
    assert module.distillation_loss(t, t).item() == pytest.approx(0, abs=1e-6)


def test_a_teacher_of_other_classes_or_images_is_refused(tmp_path):
    train(compose_config(TINY + ["model=resnet20", "data.num_classes=4"], tmp_path / "four"))
    with pytest.raises(ConfigError, match="has 4 classes but the data has 10"):
        train(compose_config(TINY + [f"distill.teacher_ckpt={tmp_path / 'four/checkpoints/best.ckpt'}"],
                             tmp_path / "student"))
    train(compose_config(TINY + ["model=resnet20", "model.in_channels=1", "data.channels=1"], tmp_path / "gray"))
    with pytest.raises(ConfigError, match="trained on 1-channel 8x8 images, but SyntheticDataModule serves 3-channel"):
        train(compose_config(TINY + [f"distill.teacher_ckpt={tmp_path / 'gray/checkpoints/best.ckpt'}"],
                             tmp_path / "student2"))
