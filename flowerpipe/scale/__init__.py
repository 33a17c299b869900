"""Beyond one machine: Ray Train for training, TF_CONFIG for Kubernetes (Kubeflow Trainer v2) pods."""
