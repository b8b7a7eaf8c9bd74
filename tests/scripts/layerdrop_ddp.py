"""Two-process DDP run of a tiny BERT with LayerDropCallback (started by tests/test_callbacks.py via torchrun).

    torchrun --nproc_per_node 2 tests/scripts/layerdrop_ddp.py OUT_DIR [--no-find-unused]

Each rank writes OUT_DIR/rank{N}.pt: the steps' dropped layers and the final weights, so the test can check
that every rank skipped the same layers and ended with the same weights.
"""

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments  # noqa: E402

from hfprune.training.callbacks import LayerDropCallback  # noqa: E402


def main() -> None:
    out_dir = sys.argv[1]
    find_unused = "--no-find-unused" not in sys.argv
    torch.manual_seed(0)
    config = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=24)
    model = BertForSequenceClassification(config)
    generator = torch.Generator().manual_seed(1)
    data = [
        {"input_ids": torch.randint(3, 99, (8,), generator=generator), "labels": torch.tensor(i % 2)} for i in range(48)
    ]
    args = TrainingArguments(
        output_dir=out_dir,
        use_cpu=True,
        ddp_backend="gloo",
        ddp_find_unused_parameters=find_unused,
        per_device_train_batch_size=4,
        max_steps=6,
        learning_rate=1e-2,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        seed=0,
    )
    callback = LayerDropCallback(p=0.5, seed=7)
    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[callback])
    trainer.train()
    state = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    rank = int(os.environ.get("RANK", "0"))
    torch.save({"history": callback.history, "world_size": args.world_size, "state": state}, os.path.join(out_dir, f"rank{rank}.pt"))
    if torch.distributed.is_initialized():  # tear down before exit: see trainer_distributed.py
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
