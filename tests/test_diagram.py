import dataclasses
import html
import re
from pathlib import Path

from tinyvit import ViTConfig
from tinyvit.diagram import architecture_figure, encoder_stages, main, save_architecture, side_stages

SHIPPED_SVG = Path(__file__).resolve().parents[1] / "book" / "_assets" / "architecture.svg"


def svg_texts(path: Path) -> list[str]:
    return [html.unescape(t) for t in re.findall(r"<text[^>]*>([^<]*)</text>", path.read_text())]


def figure_texts(cfg=None) -> list[str]:
    fig = architecture_figure(cfg)
    return [t.get_text() for t in fig.axes[0].texts]


def test_the_encoder_lane_states_the_chapter_shapes():
    shapes = [stage.shape for stage in encoder_stages(ViTConfig())]
    assert shapes == ["(3, 224, 224)", "(196, 768)", "(196, 128)", "(197, 128)", "(197, 128)", "(128,)", "(256,)"]
    notes = " ".join(stage.note for stage in encoder_stages(ViTConfig()))
    for words in ("150,528 numbers", "14 x 14 grid of 16 x 16", "linear 768 → 128", "1 + 196 tokens",
                  "2 heads, MLP 512", "linear 128 → 256"):
        assert words in notes


def test_the_figure_shows_both_sides_of_the_image_token():
    texts = figure_texts()
    for words in ("InfoNCE", "SentencePiece", "text encoder", "Thinker", "(6, 256)", "(5, 256)",
                  "4 pre-norm blocks", "image token", "training (CLIP)", "use (Thinker)"):
        assert words in texts, words


def test_the_numbers_follow_the_config():
    small = dataclasses.replace(ViTConfig(), image_size=64, patch_size=8)
    texts = figure_texts(small)
    assert "(65, 128)" in texts and "(64, 192)" in texts and "8 x 8 grid of 8 x 8" in texts
    assert "(197, 128)" not in texts
    assert side_stages(small, text_tokens=3)["thinker"].shape == "(4, 256)"


def test_saving_an_svg_twice_gives_the_same_file_with_its_labels_as_text(tmp_path):
    first, second = save_architecture(tmp_path / "a.svg"), save_architecture(tmp_path / "b.svg")
    assert first.read_bytes() == second.read_bytes()
    assert "(197, 128)" in svg_texts(first) and "Date" not in first.read_text()


def test_the_book_svg_is_the_one_the_code_draws(tmp_path):
    fresh = save_architecture(tmp_path / "architecture.svg")
    assert svg_texts(SHIPPED_SVG) == svg_texts(fresh), "run: python -m tinyvit.diagram book/_assets/architecture.svg"


def test_the_command_line_writes_the_file(tmp_path, capsys):
    assert main([str(tmp_path / "fig.svg")]) == 0 and (tmp_path / "fig.svg").exists()
    assert main([]) == 2 and "usage" in capsys.readouterr().err
