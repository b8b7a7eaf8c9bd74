import os

os.environ["HF_HUB_OFFLINE"] = "1"

import json
import math
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from sklearn.metrics import matthews_corrcoef
from transformers import BertTokenizer, EvalPrediction, LlamaConfig, LlamaForCausalLM

from hfprune.tasks import (
    GLUE_TASKS,
    TaskDataError,
    TaskSpec,
    compute_metrics,
    get_task,
    lm_blocks,
    load_files,
    load_lm_texts,
    load_task,
    make_compute_metrics,
    metric_for_task,
    perplexity,
    tokenize_task,
)

# shared/ lies beside the project's checkout (for CI too); GLUE_DIR overrides it
GLUE_DIR = Path(os.environ.get("GLUE_DIR", Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"))
needs_sst2 = pytest.mark.skipif(not (GLUE_DIR / "SST-2" / "dev.tsv").is_file(), reason="real SST-2 copy not present")


# --------------------------------------------------------------------------------------------------
# Fixture files in the original GLUE layouts (rows taken from / modelled on the real files)
# --------------------------------------------------------------------------------------------------

MNLI_TRAIN_HEADER = (
    "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse"
    "\tsentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label"
)
MNLI_DEV_HEADER = (
    "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse"
    "\tsentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label"
)


def mnli_row(i, s1, s2, labels):
    parse = "( ( x ) )\t( ( y ) )\t(ROOT (S x))\t(ROOT (S y))"
    return f"{i}\t{31193 + i}\t{31193 + i}n\tgovernment\t{parse}\t{s1}\t{s2}\t" + "\t".join(labels)


FIXTURES = {
    "cola": {
        "train.tsv": "gj04\t1\t\tOur friends won't buy this analysis, let alone the next one we propose.\n"
        "gj04\t0\t*\tThey drank the pub.\n"
        "gj04\t1\t\tThe sailors rode the breeze clear of the rocks.\n",
        "dev.tsv": "clc95\t1\t\tThe sailors rode the breeze clear of the rocks.\n"
        "clc95\t0\t*\tThe more we study verbs, the crazier they get get.\n",
    },
    "mrpc": {
        # The real MRPC files start with a UTF-8 byte-order mark and contain bare double quotes.
        "train.tsv": "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
        '1\t702876\t702977\tAmrozi accused his brother , whom he called " the witness " , of deliberately '
        'distorting his evidence .\tReferring to him as only " the witness " , Amrozi accused his brother of '
        "deliberately distorting his evidence .\n"
        "0\t2108705\t2108831\tYucaipa owned Dominick 's before selling the chain to Safeway in 1998 for $ 2.5 "
        "billion .\tYucaipa bought Dominick 's in 1995 for $ 693 million and sold it to Safeway for $ 1.8 "
        "billion in 1998 .\n",
        "dev.tsv": "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
        "1\t1355540\t1355592\tHe said the foodservice pie business doesn 't fit the company 's long-term growth "
        "strategy .\t\" The foodservice pie business does not fit our long-term growth strategy .\n",
    },
    "qqp": {
        "train.tsv": "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"
        "133273\t213221\t213222\tHow is the life of a math student? Could you describe your own experiences?"
        "\tWhich level of prepration is enough for the exam jlpt5?\t0\n"
        "402555\t536040\t536041\tHow do I control my horny emotions?\tHow do you control your horniness?\t1\n",
        "dev.tsv": "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"
        "201359\t303345\t303346\tWhy are African-Americans so beautiful?\tWhy are hispanics so beautiful?\t0\n",
    },
    "stsb": {
        "train.tsv": "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
        "0\tmain-captions\tMSRvid\t2012test\t0001\tnone\tnone\tA plane is taking off.\tAn air plane is taking off."
        "\t5.000\n"
        "1\tmain-captions\tMSRvid\t2012test\t0004\tnone\tnone\tA man is playing a large flute.\tA man is playing a "
        "flute.\t3.800\n",
        "dev.tsv": "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
        "0\tmain-captions\tMSRvid\t2012test\t0000\tnone\tnone\tA man with a hard hat is dancing.\tA man wearing a "
        "hard hat is dancing.\t5.000\n",
    },
    "mnli": {
        "train.tsv": MNLI_TRAIN_HEADER
        + "\n"
        + mnli_row(0, "Conceptually cream skimming has two basic dimensions.", "Product and geography are what "
                   "make cream skimming work.", ["neutral", "neutral"])
        + "\n"
        + mnli_row(1, "you know during the season and i guess at at your level uh you lose them", "You lose the "
                   "things to the following level if the people recall.", ["entailment", "entailment"])
        + "\n"
        + mnli_row(2, "One of our number will carry out your instructions minutely.", "A member of my team will "
                   "execute your orders with immense precision.", ["contradiction", "contradiction"])
        + "\n",
        "dev_matched.tsv": MNLI_DEV_HEADER
        + "\n"
        + mnli_row(0, "The new rights are nice enough", "Everyone really likes the newest benefits ",
                   ["neutral", "entailment", "neutral", "neutral", "neutral", "neutral"])
        + "\n",
        "dev_mismatched.tsv": MNLI_DEV_HEADER
        + "\n"
        + mnli_row(0, "Your contribution helped make it possible for us to provide our students with a quality "
                   "education.", "Your contributions were of no help with our students' education.",
                   ["contradiction"] * 6)
        + "\n",
    },
    "qnli": {
        "train.tsv": "index\tquestion\tsentence\tlabel\n"
        "0\tWhen did the third Digimon series begin?\tUnlike the two seasons before it and most of the seasons that "
        "followed, Digimon Tamers takes a darker and more realistic approach to its story.\tnot_entailment\n"
        "1\tWhich missile batteries often have individual launchers several kilometres from one another?\tWhen "
        "MANPADS is operated by specialists, batteries may have several dozen teams deploying separately.\t"
        "entailment\n",
        "dev.tsv": "index\tquestion\tsentence\tlabel\n"
        "0\tWhat came into force after the new constitution was herald?\tAs of that day, the new constitution "
        "heralding the Second Republic came into force.\tentailment\n",
    },
    "rte": {
        "train.tsv": "index\tsentence1\tsentence2\tlabel\n"
        "0\tNo Weapons of Mass Destruction Found in Iraq Yet.\tWeapons of Mass Destruction Found in Iraq.\t"
        "not_entailment\n"
        "1\tA place of sorrow, after Pope John Paul II died, became a place of celebration.\tPope Benedict XVI is "
        "the new leader of the Roman Catholic Church.\tentailment\n",
        "dev.tsv": "index\tsentence1\tsentence2\tlabel\n"
        "0\tDana Reeve, the widow of the actor Christopher Reeve, has died of lung cancer at age 44.\tChristopher "
        "Reeve had an accident.\tnot_entailment\n",
    },
    "wnli": {
        "train.tsv": "index\tsentence1\tsentence2\tlabel\n"
        "0\tI stuck a pin through a carrot. When I pulled the pin out, it had a hole.\tThe carrot had a hole.\t1\n"
        "1\tJohn couldn't see the stage with Billy in front of him because he is so short.\tJohn is so short.\t1\n"
        "2\tThe police arrested all of the gang members. They were trying to stop the drug trade.\tThe gang members "
        "were trying to stop the drug trade.\t0\n",
        "dev.tsv": "index\tsentence1\tsentence2\tlabel\n"
        "0\tThe drain is clogged with hair. It has to be cleaned.\tThe hair has to be cleaned.\t0\n",
    },
}

# Expected (split, first row text(s), labels) per fixture task.
EXPECTED = {
    "cola": ("train", ("Our friends won't buy this analysis, let alone the next one we propose.",), [1, 0, 1]),
    "mrpc": (
        "train",
        (
            'Amrozi accused his brother , whom he called " the witness " , of deliberately distorting his evidence .',
            'Referring to him as only " the witness " , Amrozi accused his brother of deliberately distorting his '
            "evidence .",
        ),
        [1, 0],
    ),
    "qqp": (
        "train",
        (
            "How is the life of a math student? Could you describe your own experiences?",
            "Which level of prepration is enough for the exam jlpt5?",
        ),
        [0, 1],
    ),
    "stsb": ("train", ("A plane is taking off.", "An air plane is taking off."), [5.0, 3.8]),
    "mnli": (
        "train",
        (
            "Conceptually cream skimming has two basic dimensions.",
            "Product and geography are what make cream skimming work.",
        ),
        [1, 0, 2],
    ),
    "qnli": ("train", ("When did the third Digimon series begin?",), [1, 0]),
    "rte": ("train", ("No Weapons of Mass Destruction Found in Iraq Yet.",), [1, 0]),
    "wnli": ("train", ("I stuck a pin through a carrot. When I pulled the pin out, it had a hole.",), [1, 1, 0]),
}


def write_glue(root: Path, task: str, files: dict[str, str] | None = None) -> Path:
    d = root / GLUE_TASKS[task].glue_dir
    d.mkdir(parents=True, exist_ok=True)
    for name, text in (files or FIXTURES[task]).items():
        (d / name).write_text(text, encoding="utf-8")
    return root


# --------------------------------------------------------------------------------------------------
# Task table
# --------------------------------------------------------------------------------------------------


def test_task_table_follows_glue():
    assert set(GLUE_TASKS) == {"cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli"}
    assert GLUE_TASKS["mnli"].label_names == ("entailment", "neutral", "contradiction")
    assert GLUE_TASKS["mnli"].eval_splits == ("validation_matched", "validation_mismatched")
    assert GLUE_TASKS["qnli"].label_names == GLUE_TASKS["rte"].label_names == ("entailment", "not_entailment")
    assert GLUE_TASKS["wnli"].label_names == ("not_entailment", "entailment")
    assert GLUE_TASKS["sst2"].label_names == ("negative", "positive")
    assert GLUE_TASKS["stsb"].num_labels == 1 and GLUE_TASKS["stsb"].is_regression
    assert GLUE_TASKS["mnli"].num_labels == 3 and GLUE_TASKS["cola"].num_labels == 2
    assert all(spec.hub_config == name for name, spec in GLUE_TASKS.items())


def test_get_task_aliases_and_unknown():
    assert get_task("SST-2") is GLUE_TASKS["sst2"]
    assert get_task("STS-B") is GLUE_TASKS["stsb"]
    spec = GLUE_TASKS["rte"]
    assert get_task(spec) is spec
    with pytest.raises(TaskDataError, match=r"Unknown task 'squad'; known tasks: cola, sst2, .*wnli"):
        get_task("squad")
    with pytest.raises(TaskDataError, match="known tasks"):
        load_task("squad")


def test_metric_for_task():
    assert metric_for_task("cola") == "matthews_correlation"
    assert metric_for_task("sst2") == "accuracy"
    assert metric_for_task("mnli") == "accuracy"
    assert metric_for_task("mrpc") == "f1"
    assert metric_for_task("stsb") == "spearmanr"


# --------------------------------------------------------------------------------------------------
# Real SST-2
# --------------------------------------------------------------------------------------------------


@needs_sst2
def test_sst2_real_dev():
    ds = load_task("sst2", data_dir=GLUE_DIR, split="validation")
    assert ds.column_names == ["sentence", "label"]
    assert ds.num_rows == 872
    assert ds.features["label"].names == ["negative", "positive"]
    labels = np.array(ds["label"])
    assert (labels == 0).sum() == 428 and (labels == 1).sum() == 444
    assert ds[0] == {"sentence": "it 's a charming and often affecting journey . ", "label": 1}
    # Line 260 of dev.tsv: quote characters must survive (csv.QUOTE_NONE).
    assert ds[258] == {"sentence": "`` the time machine '' is a movie that has no interest in itself . ", "label": 0}


@needs_sst2
def test_sst2_real_train():
    ds = load_task("sst2", data_dir=GLUE_DIR, split="train")
    assert ds.num_rows == 67349
    labels = np.array(ds["label"])
    assert (labels == 0).sum() == 29780 and (labels == 1).sum() == 37569
    assert ds[0]["sentence"] == "hide new secretions from the parental units "


# --------------------------------------------------------------------------------------------------
# Other GLUE tasks from fixture files
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", sorted(EXPECTED))
def test_glue_fixture_layouts(tmp_path, task):
    root = write_glue(tmp_path, task)
    spec = GLUE_TASKS[task]
    split, first_texts, labels = EXPECTED[task]
    ds = load_task(task, data_dir=root, split=split)
    assert ds.column_names == [*spec.text_columns, "label"]
    assert tuple(ds[0][c] for c in spec.text_columns[: len(first_texts)]) == first_texts
    if spec.is_regression:
        assert ds.features["label"].dtype == "float32"
        assert ds["label"] == pytest.approx(labels)
    else:
        assert ds.features["label"].names == list(spec.label_names)
        assert ds["label"] == labels
    for eval_split in spec.eval_splits:
        dev_file = spec.tsv.files[eval_split]
        n_rows = FIXTURES[task][dev_file].count("\n") - spec.tsv.has_header
        assert load_task(task, data_dir=root, split=eval_split).num_rows == n_rows


def test_mnli_splits_and_string_labels(tmp_path):
    root = write_glue(tmp_path, "mnli")
    matched = load_task("mnli", data_dir=root, split="validation")  # "validation" -> validation_matched
    assert matched[0] == {
        "premise": "The new rights are nice enough",
        "hypothesis": "Everyone really likes the newest benefits ",
        "label": 1,
    }
    mismatched = load_task("mnli", data_dir=root, split="validation_mismatched")
    assert mismatched["label"] == [2]
    with pytest.raises(TaskDataError, match=r"no local split 'test'; available: train, validation_matched"):
        load_task("mnli", data_dir=root, split="test")


def test_mrpc_bom_and_quotes(tmp_path):
    root = write_glue(tmp_path, "mrpc")
    dev = load_task("mrpc", data_dir=root, split="validation")
    assert dev[0]["sentence2"] == '" The foodservice pie business does not fit our long-term growth strategy .'
    assert dev["label"] == [1]
    assert dev.features["label"].names == ["not_equivalent", "equivalent"]


def test_cola_has_no_header(tmp_path):
    root = write_glue(tmp_path, "cola")
    dev = load_task("cola", data_dir=root, split="validation")
    assert dev["sentence"] == [
        "The sailors rode the breeze clear of the rocks.",
        "The more we study verbs, the crazier they get get.",
    ]
    assert dev["label"] == [1, 0]


def test_missing_file(tmp_path):
    with pytest.raises(TaskDataError, match=r"GLUE file not found: .*RTE/dev\.tsv"):
        load_task("rte", data_dir=tmp_path, split="validation")


def test_missing_column(tmp_path):
    bad = FIXTURES["rte"]["train.tsv"].replace("\tlabel\n", "\tgold\n", 1)
    root = write_glue(tmp_path, "rte", {"train.tsv": bad})
    with pytest.raises(TaskDataError) as err:
        load_task("rte", data_dir=root)
    msg = str(err.value)
    assert str(root / "RTE" / "train.tsv") in msg and "missing column(s) ['label']" in msg
    assert "\n" not in msg


def test_unknown_string_label(tmp_path):
    bad = FIXTURES["qnli"]["train.tsv"].replace("\tentailment\n", "\tneutral\n")
    root = write_glue(tmp_path, "qnli", {"train.tsv": bad})
    with pytest.raises(TaskDataError) as err:
        load_task("qnli", data_dir=root)
    assert str(err.value).startswith(f"{root / 'QNLI' / 'train.tsv'}:3: unknown label 'neutral'")


def test_unknown_mnli_label(tmp_path):
    bad = FIXTURES["mnli"]["dev_matched.tsv"].replace("\tneutral\n", "\t-\n")
    root = write_glue(tmp_path, "mnli", {"dev_matched.tsv": bad})
    with pytest.raises(TaskDataError, match=r"dev_matched\.tsv:2: unknown label '-' for task 'mnli'"):
        load_task("mnli", data_dir=root, split="validation_matched")


def test_out_of_range_int_label_and_bad_score(tmp_path):
    root = write_glue(tmp_path, "wnli", {"train.tsv": FIXTURES["wnli"]["train.tsv"].replace("\t0\n", "\t2\n")})
    with pytest.raises(TaskDataError, match=r"WNLI/train\.tsv:4: unknown label '2'"):
        load_task("wnli", data_dir=root)
    root = write_glue(tmp_path, "stsb", {"train.tsv": FIXTURES["stsb"]["train.tsv"].replace("3.800", "high")})
    with pytest.raises(TaskDataError, match=r"STS-B/train\.tsv:3: label 'high' is not a number"):
        load_task("stsb", data_dir=root)


def test_short_rows_are_skipped_like_the_hub(tmp_path, caplog):
    text = FIXTURES["qqp"]["train.tsv"] + "999\t1\t2\ttruncated question\n"
    root = write_glue(tmp_path, "qqp", {"train.tsv": text})
    with caplog.at_level("WARNING", logger="hfprune.tasks"):
        ds = load_task("qqp", data_dir=root)
    assert ds.num_rows == 2
    assert "skipped 1 row(s)" in caplog.text and "line 4" in caplog.text


def test_hub_path_calls_load_dataset(monkeypatch):
    calls = []

    def fake_load_dataset(*args, **kwargs):
        calls.append((args, kwargs))
        text = {c: ["x"] for c in GLUE_TASKS[args[1]].text_columns}
        return datasets.Dataset.from_dict({**text, "label": [0], "idx": [0]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    ds = load_task("mnli", split="validation")
    assert calls == [(("nyu-mll/glue", "mnli"), {"split": "validation_matched"})]
    assert ds.column_names == ["premise", "hypothesis", "label"]
    load_task("SST-2")
    assert calls[-1] == (("nyu-mll/glue", "sst2"), {"split": "train"})


# --------------------------------------------------------------------------------------------------
# Custom files
# --------------------------------------------------------------------------------------------------


def test_load_files_csv_first_appearance_order(tmp_path):
    (tmp_path / "train.csv").write_text('text,label,extra\n"good, really",pos,1\nbad,neg,2\nfine,pos,3\n')
    (tmp_path / "dev.csv").write_text("text,label\nmeh,neg\n")
    dd = load_files(tmp_path / "train.csv", tmp_path / "dev.csv")
    assert dd["train"].column_names == ["text", "label"]
    assert dd["train"].features["label"].names == ["pos", "neg"]
    assert dd["train"]["label"] == [0, 1, 0] and dd["train"][0]["text"] == "good, really"
    assert dd["validation"]["label"] == [1]


def test_load_files_jsonl_pairs_with_label_names(tmp_path):
    rows = [{"sentence1": "a", "sentence2": "b", "label": "contradiction"},
            {"sentence1": "c", "sentence2": "d", "label": "entailment"}]
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    names = ("entailment", "neutral", "contradiction")
    dd = load_files(tmp_path / "train.jsonl", text_columns=("sentence1", "sentence2"), label_names=names)
    assert list(dd) == ["train"]
    assert dd["train"]["label"] == [2, 0]
    assert dd["train"].features["label"].names == list(names)


def test_load_files_int_and_float_labels(tmp_path):
    (tmp_path / "int.csv").write_text("text,label\na,0\nb,2\n")
    dd = load_files(tmp_path / "int.csv")
    assert dd["train"].features["label"].names == ["0", "1", "2"]
    (tmp_path / "float.csv").write_text("text,label\na,0.5\nb,4.25\n")
    dd = load_files(tmp_path / "float.csv")
    assert dd["train"].features["label"].dtype == "float32"
    assert dd["train"]["label"] == [0.5, 4.25]


def test_load_files_errors(tmp_path):
    (tmp_path / "train.csv").write_text("text,label\na,pos\nb,neg\n")
    (tmp_path / "dev.csv").write_text("sentence,label\nc,pos\n")
    with pytest.raises(TaskDataError, match=r"dev\.csv: missing column\(s\) \['text'\]"):
        load_files(tmp_path / "train.csv", tmp_path / "dev.csv")
    (tmp_path / "dev.csv").write_text("text,label\nc,pos\nd,meh\n")
    with pytest.raises(TaskDataError, match=r"dev\.csv:3: unknown label 'meh', not one of the labels of .*train\.csv"):
        load_files(tmp_path / "train.csv", tmp_path / "dev.csv")
    with pytest.raises(TaskDataError, match=r"Data file not found: .*nope\.csv"):
        load_files(tmp_path / "nope.csv")


# --------------------------------------------------------------------------------------------------
# Tokenization
# --------------------------------------------------------------------------------------------------

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "a", "dog", ".", "on", "mat"]


@pytest.fixture
def tokenizer():
    return BertTokenizer(vocab={w: i for i, w in enumerate(WORDS)})


def test_tokenize_task_pairs(tokenizer):
    ds = datasets.Dataset.from_dict(
        {"sentence1": ["the cat sat"], "sentence2": ["a dog ."], "label": [1], "idx": [7]},
    )
    out = tokenize_task(ds, tokenizer, "rte", max_length=8)
    assert sorted(out.column_names) == ["attention_mask", "input_ids", "labels", "token_type_ids"]
    assert out[0]["input_ids"] == [2, 5, 6, 3, 8, 9, 10, 3]  # longest_first truncation to 8
    assert out[0]["token_type_ids"] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert out[0]["labels"] == 1


def test_tokenize_task_custom_spec(tokenizer):
    ds = datasets.Dataset.from_dict({"text": ["the cat", "a dog on the mat"], "label": [0, 1]})
    spec = TaskSpec.custom(("text",), ("neg", "pos"))
    out = tokenize_task(ds, tokenizer, spec)
    assert out["input_ids"] == [[2, 5, 6, 3], [2, 8, 9, 11, 5, 12, 3]]
    assert out["labels"] == [0, 1]
    with pytest.raises(TaskDataError, match=r"missing column\(s\) \['sentence'\]"):
        tokenize_task(ds, tokenizer, "sst2")


# --------------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------------

LABELS = [1, 1, 1, 0, 0, 0]
PREDS = [1, 1, 0, 0, 0, 1]  # TP=2 TN=2 FP=1 FN=1


def test_matthews_hand_example():
    result = compute_metrics("cola", PREDS, LABELS)
    assert result == {"matthews_correlation": pytest.approx(1 / 3)}  # (2*2 - 1*1) / sqrt(3^4)
    assert result["matthews_correlation"] == pytest.approx(matthews_corrcoef(LABELS, PREDS))


def test_logits_are_argmaxed():
    logits = np.array([[0.0, 1.0] if p else [2.0, -1.0] for p in PREDS])
    assert compute_metrics("sst2", logits, LABELS) == {"accuracy": pytest.approx(4 / 6)}
    assert compute_metrics("mrpc", logits, LABELS) == {"f1": pytest.approx(2 / 3), "accuracy": pytest.approx(4 / 6)}
    mnli_logits = np.eye(3)[[0, 1, 2, 2]]
    assert compute_metrics("mnli", mnli_logits, [0, 1, 2, 1]) == {"accuracy": 0.75}


def test_stsb_metrics():
    x = np.array([0.0, 1.0, 2.0, 3.5, 5.0])
    perfect = compute_metrics("stsb", (2 * x + 1)[:, None], x)  # (n, 1) regression logits
    assert perfect == {
        "spearmanr": pytest.approx(1.0), "pearson": pytest.approx(1.0), "combined_score": pytest.approx(1.0)
    }
    result = compute_metrics("stsb", [1.0, 2.0, 4.0], [1.0, 2.0, 3.0])
    assert result["pearson"] == pytest.approx(9 / math.sqrt(84))  # hand computed
    assert result["spearmanr"] == pytest.approx(1.0)
    assert result["combined_score"] == pytest.approx((1.0 + 9 / math.sqrt(84)) / 2)


def test_make_compute_metrics_takes_eval_prediction():
    fn = make_compute_metrics("qqp")
    logits = np.array([[0.0, 1.0] if p else [2.0, -1.0] for p in PREDS])
    assert fn(EvalPrediction(predictions=logits, label_ids=np.array(LABELS))) == {
        "f1": pytest.approx(2 / 3),
        "accuracy": pytest.approx(4 / 6),
    }
    with_extra_outputs = EvalPrediction(predictions=(logits, np.zeros(3)), label_ids=np.array(LABELS))
    assert fn(with_extra_outputs)["f1"] == pytest.approx(2 / 3)


# --------------------------------------------------------------------------------------------------
# Language modelling
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_llama():
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(WORDS), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    )
    return LlamaForCausalLM(config).eval()


def test_load_lm_texts(tmp_path, monkeypatch):
    (tmp_path / "corpus.txt").write_text("the cat sat\non the mat\n")
    assert load_lm_texts(tmp_path / "corpus.txt") == ["the cat sat\non the mat\n"]
    with pytest.raises(TaskDataError, match="Text file not found"):
        load_lm_texts(tmp_path / "missing.txt")

    calls = []

    def fake_load_dataset(*args, **kwargs):
        calls.append((args, kwargs))
        return datasets.Dataset.from_dict({"text": ["", " = Title = \n", "body\n"]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert load_lm_texts("Salesforce/wikitext", "wikitext-2-raw-v1") == ["", " = Title = \n", "body\n"]
    assert calls == [(("Salesforce/wikitext", "wikitext-2-raw-v1"), {"split": "test"})]


def test_lm_blocks(tokenizer):
    texts = ["the cat sat on the mat ."] * 3
    ids = tokenizer("\n\n".join(texts))["input_ids"]
    blocks = lm_blocks(texts, tokenizer, block_size=5)
    assert len(ids) == 23 and blocks.num_rows == 4  # remainder of 3 tokens dropped
    rows = blocks[:]
    assert rows["input_ids"].tolist() == [ids[i : i + 5] for i in range(0, 20, 5)]
    assert torch.equal(rows["labels"], rows["input_ids"])
    with pytest.raises(TaskDataError, match="fewer than one block"):
        lm_blocks(["the cat"], tokenizer, block_size=16)


def test_perplexity_matches_model_loss_on_one_block(tiny_llama):
    input_ids = torch.randint(0, len(WORDS), (1, 16), generator=torch.Generator().manual_seed(1))
    loader = [{"input_ids": input_ids, "labels": input_ids}]
    with torch.no_grad():
        loss = tiny_llama(input_ids=input_ids, labels=input_ids).loss
    assert perplexity(tiny_llama, loader) == pytest.approx(math.exp(loss.item()), rel=1e-5)


def test_perplexity_weights_by_token_count(tiny_llama, tokenizer):
    texts = ["the cat sat on the mat . a dog sat on a cat ."] * 4
    blocks = lm_blocks(texts, tokenizer, block_size=8)
    loader = torch.utils.data.DataLoader(blocks, batch_size=3)  # batches of 3 and fewer blocks
    # Second "batch" ignores some tokens, so batches predict different numbers of tokens.
    short = blocks[:1]["input_ids"]
    short_labels = short.clone()
    short_labels[:, :5] = -100
    batches = [*loader, {"input_ids": short, "labels": short_labels}]

    nll, count = 0.0, 0
    with torch.no_grad():
        for b in batches:
            n = int((b["labels"][:, 1:] != -100).sum())
            nll += tiny_llama(input_ids=b["input_ids"], labels=b["labels"]).loss.item() * n
            count += n
    assert len({int((b["labels"][:, 1:] != -100).sum()) for b in batches}) > 1
    assert perplexity(tiny_llama, batches) == pytest.approx(math.exp(nll / count), rel=1e-5)
    # Without labels, right padding (attention_mask == 0) is not scored.
    mask = torch.ones_like(short)
    mask[:, -3:] = 0
    assert perplexity(tiny_llama, [{"input_ids": short, "attention_mask": mask}]) == pytest.approx(
        perplexity(tiny_llama, [{"input_ids": short[:, :-3]}]), rel=1e-5
    )
