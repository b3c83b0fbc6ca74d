"""Site-side training and evaluation (torch); no Flower imports."""

from fedcore.clients.trainer import TrainConfig, evaluate, predict_scores, train_epochs, train_steps

__all__ = ["TrainConfig", "evaluate", "predict_scores", "train_epochs", "train_steps"]
