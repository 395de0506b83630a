"""Training and evaluation engine: configs, checkpoints, the training loop, evaluation, DDP.

    >>> from facemark.engine.config import load_config
    >>> from facemark.engine.train import train
    >>> from facemark.engine.evaluate import evaluate
    >>> config = load_config("configs/slpt_hrnet_wflw.yaml", ["data.root=/data/WFLW", "optim.epochs=10"])
    >>> result = train(config)                                   # runs/slpt_hrnet_wflw/{last,best}.pt
    >>> results = evaluate(result.best_checkpoint, "/data/WFLW")  # dataset/split from the checkpoint
    >>> print(results.table())

Modules (nothing is imported here, so ``facemark --help`` stays fast):

* :mod:`~facemark.engine.config`: typed config dataclasses, YAML with ``base:``, ``key=value`` overrides;
* :mod:`~facemark.engine.methods`: the per-method adapters (SLPT, SDFL, FC baseline);
* :mod:`~facemark.engine.pretrained`: ``model.pretrained``, the checked ImageNet start of a backbone;
* :mod:`~facemark.engine.data`: records -> face-crop tensors, validation carving;
* :mod:`~facemark.engine.checkpoint`: atomic checkpoints, ``load_model`` (rebuild from the file alone);
* :mod:`~facemark.engine.train`: ``train(config, resume=False)``;
* :mod:`~facemark.engine.evaluate`: ``evaluate``, ``score``, predictions files;
* :mod:`~facemark.engine.distributed`: torchrun / DDP set-up;
* :mod:`~facemark.engine.commands`: the ``facemark train / evaluate / score`` front ends.
"""
