import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tinyvit.config import TextConfig, ViTConfig
from tinyvit.contrastive import CLIP
from tinyvit.data import COLOURS, SHAPES, ShapesConfig, ShapesDataset
from tinyvit.evaluate import (
    caption_matches, class_embeddings, embed_images, evaluate_clip, evaluate_shapes, recall_at_k, retrieval_metrics,
    shapes_prompts, similarity_matrix, streamed_retrieval, zero_shot_classify,
)
from tinyvit.text import Tokenizer

SIM = torch.tensor([[0.9, 0.1, 0.0],
                    [0.8, 0.2, 0.1],
                    [0.0, 0.3, 0.5]])


def test_recall_at_k_on_a_hand_made_matrix():
    assert recall_at_k(SIM, 1) == pytest.approx(2 / 3)  # row 1 ranks column 0 first
    assert recall_at_k(SIM, 2) == pytest.approx(1.0)
    assert recall_at_k(SIM.T, 1) == pytest.approx(2 / 3)  # text 1 ranks image 2 first
    assert recall_at_k(SIM, 10) == 1.0  # k beyond the columns: all of them
    metrics = retrieval_metrics(SIM, ks=(1, 2))
    assert metrics == pytest.approx({"i2t_recall@1": 2 / 3, "i2t_recall@2": 1.0, "t2i_recall@1": 2 / 3,
                                     "t2i_recall@2": 1.0})


def test_recall_counts_an_identical_caption_as_a_hit():
    captions = ["a red circle", "a blue star", "a red circle"]
    matches = caption_matches(captions)
    assert matches.tolist() == [[True, False, True], [False, True, False], [True, False, True]]
    sim = torch.tensor([[0.1, 0.0, 0.9],   # image 0 picks caption 2: the same text as its own
                        [0.0, 0.9, 0.1],
                        [0.2, 0.3, 0.1]])  # image 2 picks caption 1: wrong
    assert recall_at_k(sim, 1) == pytest.approx(1 / 3)  # the diagonal alone
    assert recall_at_k(sim, 1, matches) == pytest.approx(2 / 3)
    assert retrieval_metrics(sim, captions, ks=(1,))["i2t_recall@1"] == pytest.approx(2 / 3)


def test_recall_input_errors():
    with pytest.raises(ValueError, match="must be square, got 2x3"):
        recall_at_k(torch.zeros(2, 3), 1)
    with pytest.raises(ValueError, match=r"matches has shape \(2, 2\), expected \(3, 3\)"):
        recall_at_k(SIM, 1, torch.eye(2, dtype=torch.bool))
    with pytest.raises(ValueError, match="k must be at least 1"):
        recall_at_k(SIM, 0)


def test_similarity_matrix_is_cosine():
    img, txt = torch.randn(4, 8), torch.randn(5, 8)
    sim = similarity_matrix(3 * img, 0.5 * txt)
    assert sim.shape == (4, 5)
    torch.testing.assert_close(sim, F.cosine_similarity(img[:, None], txt[None], dim=-1))


class WordModel(nn.Module):
    """A hand-built 'CLIP': an image is its own 3-d embedding; a text is the mean of fixed word vectors."""

    text_cfg = TextConfig(vocab_size=8, context_length=6)

    def __init__(self):
        super().__init__()
        table = torch.zeros(8, 3)
        table[4:7] = torch.eye(3)  # red, green, blue
        table[7] = 0.2  # "a": the same small amount in every direction
        self.table = nn.Parameter(table)

    def encode_image(self, images):
        return F.normalize(images, dim=-1)

    def encode_text(self, tokens):
        words = (tokens >= 4).float().unsqueeze(-1)  # (B, T, 1)
        return F.normalize((self.table[tokens] * words).sum(1) / words.sum(1), dim=-1)


class WordTokenizer:
    ids = {"red": 4, "green": 5, "blue": 6, "a": 7}

    def encode_batch(self, texts, context_length):
        out = torch.zeros(len(texts), context_length, dtype=torch.long)
        for b, text in enumerate(texts):
            row = [2] + [self.ids[w] for w in text.split()] + [3]
            out[b, :len(row)] = torch.tensor(row)
        return out


def test_zero_shot_picks_the_nearest_class_and_scores_accuracy():
    images = torch.tensor([[1.0, 0.2, 0.0], [0.0, 0.1, 1.0], [0.1, 0.9, 0.3], [0.6, 0.5, 0.0]])
    classes = ["red", "green", "blue"]
    labels = torch.tensor([0, 2, 1, 1])
    predictions, acc = zero_shot_classify(WordModel(), WordTokenizer(), images, classes, labels, ["{}", "a {}"])
    assert predictions.tolist() == [0, 2, 1, 0]
    assert acc == pytest.approx(3 / 4)
    assert zero_shot_classify(WordModel(), WordTokenizer(), images, classes)[1] is None


def test_class_embeddings_average_templates_and_accept_prompt_lists():
    model, tok = WordModel(), WordTokenizer()
    by_template = class_embeddings(model, tok, ["red", "blue"], templates=["{}", "a {}"])
    by_list = class_embeddings(model, tok, [["red", "a red"], ["blue", "a blue"]])
    torch.testing.assert_close(by_template, by_list)
    red = (F.normalize(torch.tensor([1.0, 0, 0]), dim=0) + F.normalize(torch.tensor([0.6, 0.1, 0.1]), dim=0)) / 2
    torch.testing.assert_close(by_template[0], F.normalize(red, dim=0))
    with pytest.raises(ValueError, match="needs a '\\{\\}'"):
        class_embeddings(model, tok, ["red"], templates=["a photo"])


def tiny_clip_and_tokenizer(captions):
    tokenizer = Tokenizer.train(captions, vocab_size=64)
    vision = ViTConfig(image_size=16, patch_size=8, dim=32, depth=1, heads=2, mlp_dim=64, out_dim=16)
    text = TextConfig(vocab_size=tokenizer.vocab_size, context_length=16, dim=32, out_dim=16)
    return CLIP(vision, text), tokenizer


def test_evaluate_clip_and_shapes_report_every_metric_in_range():
    cfg = ShapesConfig(image_size=16)
    model, tokenizer = tiny_clip_and_tokenizer(ShapesDataset(300, cfg).captions)
    data = ShapesDataset(24, cfg, split="heldout")
    model.train()
    metrics = evaluate_clip(model, tokenizer, data, data.captions, labels=data.labels("shape"),
                            class_prompts=list(SHAPES), templates=["a {}", "a small {}"])
    assert model.training  # evaluation put it back as it was
    assert set(metrics) == {"n", "zero_shot_top1", "i2t_recall@1", "i2t_recall@5", "t2i_recall@1", "t2i_recall@5"}
    assert metrics["n"] == 24 and all(0 <= v <= 1 for k, v in metrics.items() if k != "n")
    assert metrics["i2t_recall@1"] <= metrics["i2t_recall@5"]
    shapes = evaluate_shapes(model, tokenizer, data)
    assert {"shape_zero_shot", "colour_zero_shot", "n_zero_shot", "i2t_recall@1"} <= set(shapes)
    assert 0 < shapes["n_zero_shot"] < 24
    with pytest.raises(ValueError, match="labels run from 0 to 4, but only 2 classes"):
        evaluate_clip(model, tokenizer, data, data.captions, labels=data.labels("shape"), class_prompts=["a", "b"])
    with pytest.raises(ValueError, match="24 images but 3 captions"):
        evaluate_clip(model, tokenizer, data, data.captions[:3])


def test_embed_images_is_deterministic_eval_mode_and_batched():
    model, _ = tiny_clip_and_tokenizer(["a red circle", "a blue star"] * 5)
    images = torch.randn(10, 3, 16, 16)
    whole = embed_images(model, images, batch_size=16)
    torch.testing.assert_close(embed_images(model, images, batch_size=3), whole)
    assert whole.shape == (10, 16)
    torch.testing.assert_close(whole.norm(dim=-1), torch.ones(10))


def test_shapes_prompts_cover_every_class_with_correct_articles():
    shape = shapes_prompts("shape")
    assert len(shape) == len(SHAPES) and all(len(p) == len(COLOURS) for p in shape)
    assert "an orange circle" in shape[0] and "a red circle" in shape[0]
    assert len(shapes_prompts("colour")) == len(COLOURS)


def test_oracle_recall_picks_the_most_specific_true_caption():
    from tinyvit.evaluate import oracle_recall_at_1

    captions = ["a red square", "a small red square", "a red square", "a blue circle"]
    truths = [{"a red square", "a small red square"},  # image 0 is a small red square captioned vaguely
              {"a red square", "a small red square"},
              {"a red square", "a large red square"},
              {"a blue circle"}]
    # image 0 and 1: "a small red square" (true of 2 images) beats "a red square" (true of 3): 0 misses, 1 hits;
    # image 2: "a red square" is its only true text in the pool: a hit; image 3: a hit.
    assert oracle_recall_at_1(captions, truths) == 0.75
    with pytest.raises(ValueError, match="2 captions but 1 sets"):
        oracle_recall_at_1(captions[:2], truths[:1])
    with pytest.raises(ValueError, match="caption 3 .'a blue circle'. is not among the true captions"):
        oracle_recall_at_1(captions, truths[:3] + [{"a red circle"}])


def test_caption_options_hold_every_caption_and_the_shapes_ceiling_is_0_578():
    from tinyvit.data import ShapesDataset, caption_options
    from tinyvit.evaluate import oracle_recall_at_1

    ds = ShapesDataset(500, split="heldout", seed=0)
    scenes = ds.scenes()
    options = [caption_options(scene["objects"]) for scene in scenes]
    assert all(scene["caption"] in opts for scene, opts in zip(scenes, options))
    assert {len(o) for o, s in zip(options, scenes) if len(s["objects"]) == 1} == {6}
    assert {len(o) for o, s in zip(options, scenes) if len(s["objects"]) == 2} == {3}
    assert oracle_recall_at_1(ds.captions, options) == 0.578  # what README and clip_shapes quote


def test_streamed_retrieval_equals_the_full_matrix_in_any_block_size():
    torch.manual_seed(0)
    img, txt = torch.randn(37, 8), torch.randn(37, 8)
    captions = [f"caption {i % 30}" for i in range(37)]  # 7 captions twice: any of their images is right
    dense = retrieval_metrics(similarity_matrix(img, txt), captions)
    for block in (1, 5, 37, 100):
        assert streamed_retrieval(img, txt, captions, block=block) == dense
    assert streamed_retrieval(img, txt) == retrieval_metrics(similarity_matrix(img, txt))


class FixedEmbeddings(nn.Module):
    """A stand-in CLIP whose image embedding is the image tensor itself and whose text embedding is looked up by
    caption: known answers for every metric."""

    def __init__(self, texts: dict[str, list[float]]):
        super().__init__()
        self.names = list(texts)
        self.register_buffer("table", torch.tensor(list(texts.values())))
        self.weight = nn.Parameter(torch.zeros(1))  # a parameter, so the evaluators can find the device
        self.text_cfg = TextConfig(context_length=3)

    def encode_batch(self, texts, context_length):  # the tokenizer's side
        return torch.tensor([[self.names.index(t)] for t in texts])  # (B, 1)

    def encode_image(self, images):
        return F.normalize(images, dim=-1)  # (B, 2)

    def encode_text(self, tokens):
        return F.normalize(self.table[tokens[:, 0]], dim=-1)  # (B, 2)


def at(degrees: float) -> list[float]:
    radians = torch.tensor(degrees).deg2rad()
    return [float(radians.cos()), float(radians.sin())]


def test_recall_and_zero_shot_on_fixed_embeddings_where_i2t_and_t2i_differ():
    """Unit vectors at angles: images at 0, 50 and 90 degrees, their captions at 40, 45 and 90 degrees.
    Image -> text: each image's nearest caption is its own (3 of 3). Text -> image: caption 0 (40) is nearer to
    image 1 (50) than to image 0 (0), so 2 of 3. Classes at 0 and 90 degrees, labels 0, 0, 1: image 1 (50) is
    nearer class 1, so zero-shot is 2 of 3."""
    model = FixedEmbeddings({"t0": at(40), "t1": at(45), "t2": at(90), "class 0": at(0), "class 1": at(90)})
    images = torch.tensor([at(0), at(50), at(90)])  # (3, 2)
    metrics = evaluate_clip(model, model, images, ["t0", "t1", "t2"], labels=torch.tensor([0, 0, 1]),
                            class_prompts=["class 0", "class 1"])
    assert metrics == {"n": 3, "zero_shot_top1": 2 / 3, "i2t_recall@1": 1.0, "i2t_recall@5": 1.0,
                       "t2i_recall@1": 2 / 3, "t2i_recall@5": 1.0}
