import pytest
import torch

from addernet.errors import ConfigError
from addernet.experiments.run import train
from hydra_helpers import compose_config

TINY = ["trainer=cpu", "logger=csv", "run_name=test", "data=synthetic", "data.train_size=64", "data.test_size=32",
        "data.image_size=8", "data.batch_size=16", "trainer.max_epochs=1"]


def test_an_adder_network_learns_from_its_frozen_cnn_twin(tmp_path):
    train(compose_config(TINY + ["model=resnet20"], tmp_path / "teacher"))
    teacher_ckpt = tmp_path / "teacher" / "checkpoints" / "best.ckpt"
    before = torch.load(teacher_ckpt, map_location="cpu", weights_only=False)["state_dict"]
    metrics = train(compose_config(TINY + [f"distill.teacher_ckpt={teacher_ckpt}", "trainer.max_epochs=2"],
                                   tmp_path / "student"))
    assert metrics["train/kd_loss"] > 0 and 0 <= metrics["teacher/val_acc"] <= 1
    assert torch.load(teacher_ckpt, map_location="cpu", weights_only=False)["state_dict"].keys() == before.keys()
    student = torch.load(tmp_path / "student" / "checkpoints" / "last.ckpt", map_location="cpu",
                         weights_only=False)["state_dict"]
    assert not any("teacher" in key for key in student)  # the teacher is not part of the student's checkpoint


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
    train(compose_config(TINY + ["model=resnet20", "+model.in_channels=1", "data.channels=1"], tmp_path / "gray"))
    with pytest.raises(ConfigError, match="cannot take this data's images of shape \\(3, 8, 8\\)"):
        train(compose_config(TINY + [f"distill.teacher_ckpt={tmp_path / 'gray/checkpoints/best.ckpt'}"],
                             tmp_path / "student2"))
