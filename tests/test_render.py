"""Laying out a report document: HTML escapes text and colours differences; Markdown marks them and links figures."""

from pathlib import Path
from types import SimpleNamespace

from latentbench.render import Cell, Document, Table, render_html, render_markdown

PNG = bytes.fromhex("89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c4890000000d4944415478da63f8"
                    "cfc0f01f0005000201a5d6f7a40000000049454e44ae426082")  # a 1x1 PNG


def _document(figure: Path) -> Document:
    diff = [[Cell("MNIST <b>", numeric=False), Cell("98.9%"), Cell("+0.3 pt", good=True)],
            [Cell("CIFAR | 10", numeric=False), Cell("86.8%"), Cell("-1.8 pt", good=False)]]
    tables = [Table("Table 1", ["model", "ours", "difference"], diff, note="green: ours is better", section="reference"),
              Table("Every metric", ["model", "kNN"], [[Cell("MNIST", numeric=False), Cell("97.0%")]])]
    return Document("a <title>", ["intro line"], tables, [("MNIST Autoencoder", SimpleNamespace(name="run_s0"),
                                                           [("t-SNE", figure)])],
                    [("knn_test_acc", "all", "kNN, k=20")], [("mnist_autoencoder", "latentbench train X")],
                    [("host", "cpu")], {"source": "the study", "document": "report.pdf", "units": "%"},
                    ["1 of 2 numbers beaten"])


def test_html_escapes_text_embeds_figures_and_colours_the_differences(tmp_path):
    figure = tmp_path / "figures" / "tsne.png"
    figure.parent.mkdir()
    figure.write_bytes(PNG)
    page = render_html(_document(figure))
    assert "<title>a &lt;title&gt;</title>" in page and "MNIST &lt;b&gt;" in page and "<b>" not in page
    assert '<td class="num good">+0.3 pt</td>' in page and '<td class="num bad">-1.8 pt</td>' in page
    assert 'src="data:image/png;base64,iVBORw0KGgo' in page  # embedded: one file to mail
    assert page.index("In short") < page.index("Table 1") < page.index("Every metric") < page.index("Figures")


def test_markdown_marks_differences_escapes_pipes_and_links_figures_relative_to_itself(tmp_path):
    figure = tmp_path / "runs" / "run_s0" / "figures" / "tsne.png"
    figure.parent.mkdir(parents=True)
    figure.write_bytes(PNG)
    text = render_markdown(_document(figure), tmp_path / "out")
    assert "| MNIST <b> | 98.9% | +0.3 pt ✓ |" in text and "| CIFAR \\| 10 | 86.8% | -1.8 pt ✗ |" in text
    assert "| --- | ---: | ---: |" in text  # numeric columns right-aligned
    assert "![t-SNE — run_s0](../runs/run_s0/figures/tsne.png)" in text
    assert "## In short\n\n- 1 of 2 numbers beaten" in text
