"""Scanned pages made to order, with their ground truth: for the OCR tests and ``bench.ocr``.

Pages are drawn with Pillow from fixed English, Chinese and mixed prose (deterministic: the same
arguments give the same pixels), so a recogniser's output can be scored against the exact text
and line boxes that were drawn. ``image_pdf`` wraps page images in a PDF with no text layer, as
a scanner writes it; ``cer`` is the character error rate the benchmark reports.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in 0..1 of the page, top-left origin
Font = ImageFont.FreeTypeFont

A4_INCHES = (8.27, 11.69)
MARGIN_INCHES = 0.9
GUTTER_INCHES = 0.35
LINE_PITCH = 1.45  # baseline to baseline, in font sizes
PARAGRAPH_GAP = 0.6  # extra space between paragraphs, in font sizes
LATIN_FONT = ("/usr/share/fonts/truetype/dejavu/DejaVuSerif.ttf", 0)
LATIN_BOLD_FONT = ("/usr/share/fonts/truetype/dejavu/DejaVuSerif-Bold.ttf", 0)
CJK_FONT = ("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc", 2)  # index 2: SC
CJK_BOLD_FONT = ("/usr/share/fonts/opentype/noto/NotoSansCJK-Bold.ttc", 2)

_CJK_RANGES = "\u2e80-\u9fff\uf900-\ufaff\uff00-\uffef"
_CJK = re.compile(f"[{_CJK_RANGES}]")
# A token is one Chinese character, a run of spaces, or a word.
_TOKEN = re.compile(f"[{_CJK_RANGES}]|\\s+|[^\\s{_CJK_RANGES}]+")
_NO_LINE_START = set("，。、；：！？）》」』,.;:!?)")  # punctuation that hangs rather than wraps

ENGLISH_MARKER = (
    "The quartermaster of the archive compiled seventeen kernels before breakfast on a rainy "
    "Tuesday."
)
CHINESE_MARKER = "猫头鹰在凌晨三点把第四十二号数据库搬进了地下室。"

ENGLISH = (
    "Debian is a free operating system built by volunteers from all over the world. Its first "
    "release, version 0.01, appeared in September 1993, and the project now maintains more than "
    "59,000 binary packages for nine architectures. Every package enters the unstable "
    "distribution first, then waits at least two days in testing before it can become part of "
    "the next stable release. Security updates for a stable release are published for about "
    "three years, and the Long Term Support team extends that to five.",
    "The package manager resolves dependencies before it installs anything. When you run "
    "apt-get install postgresql-15, APT reads the package lists, works out which libraries are "
    "missing, and asks for confirmation if more than one package will change. A package that is "
    "put on hold stays at its current version until it is released again: apt-mark showhold "
    "lists the held packages, and apt-mark unhold releases one of them. Removing a package keeps "
    "its configuration files; purging it deletes them as well.",
    "A relational database keeps its data in tables whose rows share the same columns. The query "
    "planner reads the statistics collected by ANALYZE and chooses between a sequential scan and "
    "an index scan; on a table of 2,500,000 rows, a good index can turn a query of 40 seconds "
    f"into one of 12 milliseconds. {ENGLISH_MARKER} Transactions either commit completely or "
    "leave no trace, which is what the letter A in ACID stands for.",
    "Configuration files under /etc belong to the administrator. When an upgrade ships a new "
    "version of a file you have edited, dpkg stops and asks whether to keep your copy, install "
    "the maintainer's version, or show the differences first. The answer can be given in advance "
    "with the options --force-confold and --force-confnew, which is useful on servers that are "
    "upgraded by a script at 03:00 in the morning, when nobody is there to answer questions.",
    "Backups are only useful if they can be restored. A sensible plan keeps three copies of the "
    "data on two kinds of storage, with one copy in another building. For a database of 80 GB, a "
    "nightly dump with pg_dump takes about 25 minutes, while continuous archiving of the "
    "write-ahead log lets you recover to any second of the last week. Test the restore at least "
    "once a month, and write down how long it took: that number is your real recovery time.",
    "Logs tell you what a program did, not what it meant to do. The systemd journal stores the "
    "messages of every service together with their priority, the process number and the exact "
    "time; journalctl -u nginx --since yesterday shows the messages of one unit, and adding "
    "-p err hides everything below the error level. Old entries are removed when the journal "
    "grows beyond 10 percent of the file system or 4 GB, whichever is smaller.",
)

CHINESE = (
    "自由软件运动开始于上世纪八十年代。它主张用户应当有运行、研究、修改和分发程序的自由，而这些"
    "自由的前提是能够得到程序的源代码。今天，从手机到超级计算机，几乎每一台设备都在使用自由软件。"
    "一个发行版把成千上万个独立开发的程序收集起来，统一编译、测试和打包，再通过遍布各地的镜像服务器"
    "分发给用户。维护者的工作并不轻松：上游发布新版本以后，他们要检查许可证是否发生了变化，修正与"
    "其他软件包的冲突，还要在十几种硬件架构上确认程序能够正常构建。一个软件包从提交到进入稳定版，"
    "往往需要好几个月的时间。正因为有这样严格的流程，服务器的管理员才敢在周五下午升级系统。"
    "许多发行版还会为每个版本提供多年的安全支持，让用户可以放心地长期使用同一个版本。",
    "关系数据库把数据保存在表中，同一张表的每一行都有相同的列。查询优化器会读取统计信息，在顺序扫描"
    "和索引扫描之间做出选择。对于一张有两百五十万行的表，一个合适的索引可以把原本需要40秒的查询缩短"
    "到12毫秒。不过，索引并不是越多越好：每插入一行数据，所有相关的索引都要同时更新，写入的速度就会"
    "随之下降。事务保证一组操作要么全部完成，要么完全不留痕迹；即使服务器在提交的过程中突然断电，"
    "重新启动以后，数据库也能根据预写日志恢复到一致的状态。设计表结构的时候，最好先想清楚哪些查询"
    "最常用，再决定建立哪些索引，而不是等到系统变慢以后才去补救。"
    "好的索引设计往往比更换更快的硬件更有效；上线之前，还应当用真实规模的数据做一次压力测试。",
    "备份只有在能够恢复的时候才有意义。一个稳妥的方案是把数据保存三份，放在两种不同的存储介质上，"
    "其中一份要放在另一栋楼里。对于一个中等规模的数据库，每天晚上做一次完整备份大约需要二十五分钟，"
    f"而持续归档预写日志则可以把数据恢复到过去一周内的任意一秒。{CHINESE_MARKER}每个月至少要做一次"
    "恢复演练，并且记录下恢复一共花了多长时间，因为这个数字才是真正的恢复时间。如果从来没有测试过"
    "恢复，那么备份只能算是一种美好的愿望，等到硬盘真的损坏时，才会发现归档文件早已不完整。"
    "备份文件本身也应当加密，并且定期检查校验和；恢复的步骤最好写成文档，放在每个人都能找到的地方。",
    "日志告诉我们程序做了什么，却不一定告诉我们它本来想做什么。系统日志会把每个服务的消息连同优先级、"
    "进程号和精确的时间一起保存下来。排查故障时，先确定问题第一次出现的时间，再查看那一分钟前后的全部"
    "记录，往往比从头到尾阅读日志有效得多。旧的记录会在日志超过文件系统容量的百分之十时被自动删除，"
    "所以重要的日志应当及时转存到别的机器上。对于访问量很大的网站，每天产生的日志可能多达几十万行，"
    "这时就需要按照时间和级别建立索引，否则一次简单的搜索也可能要等上好几分钟。"
    "日志里的时间最好统一使用协调世界时，比较不同机器上的记录时就不会因为时区而出错；日志中也不应当"
    "记录密码和个人信息。",
    "安全更新通常会在漏洞公开的当天发布。管理员应当订阅发行版的安全公告邮件列表，并且在测试环境中"
    "先安装更新，确认业务没有受到影响以后再推送到生产服务器。对于需要重新启动才能生效的内核更新，"
    "可以安排在访问量最低的凌晨进行。很多单位规定，高危漏洞必须在七十二小时之内修复，中危漏洞则在"
    "两周之内修复。为了做到这一点，最好用自动化工具统一管理所有服务器的软件版本，而不是每台机器"
    "单独登录操作；否则，总会有一两台被遗忘的旧机器，成为攻击者进入内网的入口。"
    "每次修复之后，都应当记录漏洞的编号、影响的范围和完成修复的时间，以便日后审计；定期回顾这些记录，"
    "也能帮助团队发现流程中的薄弱环节。",
)

MIXED = (
    "在 Debian 系统上，使用 apt-get install 安装软件包。执行 sudo apt-get update 会先下载最新的"
    "软件包列表，然后 apt-get upgrade 会把已经安装的软件升级到新版本。如果只想查看某个包的信息，"
    "可以运行 apt show nginx，它会显示版本号、依赖关系和安装后占用的空间。被 apt-mark hold 锁定的"
    "软件包不会被升级，直到用 apt-mark unhold 解除锁定为止。删除软件包时，apt-get remove 会保留"
    "配置文件，而 apt-get purge 会把配置文件一起删除。想知道某个文件属于哪个软件包，可以运行 "
    "dpkg -S /usr/bin/curl。",
    "PostgreSQL 的配置文件通常位于 /etc/postgresql/15/main/ 目录下。修改 postgresql.conf 中的 "
    "shared_buffers 参数可以调整共享内存的大小，一般设置为物理内存的25%左右。修改之后需要执行 "
    "systemctl restart postgresql 重启服务才能生效。使用 psql -U postgres 登录以后，输入 "
    "EXPLAIN ANALYZE 加上查询语句，就可以看到执行计划和每一步的实际耗时，这是优化慢查询最直接的"
    "办法。如果需要远程连接，还要修改 pg_hba.conf 中的访问规则，并把 listen_addresses 设置为 '*'。",
    "查看服务日志最方便的方法是 journalctl 命令。例如 journalctl -u nginx --since today 只显示 "
    "nginx 今天的日志，加上 -p err 可以隐藏错误级别以下的消息。配置文件保存在 /etc 目录中，升级时"
    "如果 dpkg 发现你修改过某个文件，会询问是保留自己的版本，还是安装维护者提供的新版本。在无人值守"
    "的服务器上，可以事先用 --force-confold 选项指定保留旧的配置。如果想把日志保存到磁盘上，需要在 "
    "/etc/systemd/journald.conf 中设置 Storage=persistent，然后重启 systemd-journald 服务。",
    "Git 是目前最流行的版本控制系统。用 git clone 下载一个仓库，用 git log --oneline 查看提交历史，"
    "用 git diff HEAD~1 比较最近一次提交的修改。每次提交都有一个由40个十六进制字符组成的 SHA-1 "
    "哈希值，它由提交的内容、作者和时间共同决定，所以任何修改都会改变这个值。多人协作时，先用 "
    "git pull --rebase 同步远程分支，再用 git push 推送自己的提交，可以让历史保持一条直线。"
    "遇到冲突时，先用 git status 查看哪些文件有冲突，手动修改以后再执行 git add 和 "
    "git rebase --continue。",
)

SAMPLES: dict[str, tuple[str, ...]] = {"en": ENGLISH, "zh": CHINESE, "mixed": MIXED}


@dataclass(frozen=True)
class ScannedPage:
    """A page image and what was drawn on it.

    Attributes:
        image: the page as scanned (greyscale; turned by ``rotate`` degrees if asked).
        text: the text drawn, in reading order: paragraphs joined with "\\n", a paragraph's
            lines joined as in its source (so a line break is a space in English, none in
            Chinese).
        lines: each drawn line (or table cell) and its ink box, normalised 0..1 with the
            origin top-left, in the frame of the upright page.
        dpi: the resolution the page was drawn at.
        rotate: degrees the upright page was turned counter-clockwise (as ``Image.rotate``).
    """

    image: Image.Image
    text: str
    lines: list[tuple[str, Box]]
    dpi: int
    rotate: int = 0

    def image_lines(self) -> list[tuple[str, Box]]:
        """``lines`` with their boxes in the frame of ``image`` (the page as turned)."""
        return [(text, rotate_box(box, self.rotate)) for text, box in self.lines]


def rotate_box(box: Box, degrees: int) -> Box:
    """A normalised box on an upright page, on that page turned ``degrees`` counter-clockwise."""
    x0, y0, x1, y1 = box
    turns = (degrees // 90) % 4
    for _ in range(turns):  # one quarter turn: (x, y) goes to (y, 1 - x)
        x0, y0, x1, y1 = y0, 1 - x1, y1, 1 - x0
    return (x0, y0, x1, y1)


def sample_paragraphs(kind: str, *, start: int = 0, count: int = 12) -> list[str]:
    """``count`` of the fixed paragraphs of ``kind`` ("en", "zh", "mixed"), cycling from ``start``.

    Enough of them overfill a page, which ``render_page`` then cuts at its bottom margin: a
    dense page, different for each ``start``.
    """
    texts = SAMPLES[kind]
    return [texts[(start + i) % len(texts)] for i in range(count)]


@functools.cache
def _font(path: str, index: int, pixels: int) -> Font:
    return ImageFont.truetype(path, pixels, index=index)


def _fonts_for(texts: Sequence[str], pixels: int, *, bold: bool = False) -> Font:
    cjk = any(_CJK.search(text) for text in texts)
    if cjk:
        path, index = CJK_BOLD_FONT if bold else CJK_FONT
    else:
        path, index = LATIN_BOLD_FONT if bold else LATIN_FONT
    return _font(path, index, pixels)


def wrap(paragraph: str, font: Font, width: float) -> list[tuple[int, int]]:
    """Where ``paragraph`` breaks into lines ``width`` pixels wide: (start, end) of each line.

    English breaks between words, Chinese between any two characters; the space at a break is
    dropped, and closing punctuation hangs at the end of a line rather than starting the next.
    """
    lines: list[tuple[int, int]] = []
    start = end = 0
    for match in _TOKEN.finditer(paragraph):
        token = match.group()
        fits = font.getlength(paragraph[start : match.end()].rstrip()) <= width
        if fits or end == start or token in _NO_LINE_START:
            end = match.end()
            continue
        lines.append((start, len(paragraph[:end].rstrip())))
        start, end = (match.end(), match.end()) if token.isspace() else match.span()
    if start < len(paragraph):
        lines.append((start, len(paragraph.rstrip())))
    return [(a, b) for a, b in lines if b > a]


class _Canvas:
    """A blank page being drawn on, which keeps each line's text and normalised ink box."""

    def __init__(self, dpi: int) -> None:
        self.size = (round(A4_INCHES[0] * dpi), round(A4_INCHES[1] * dpi))
        self.image = Image.new("L", self.size, 255)
        self.draw = ImageDraw.Draw(self.image)
        self.drawn: list[tuple[str, Box]] = []

    def line(self, text: str, at: tuple[int, int], font: Font) -> None:
        self.draw.text(at, text, fill=0, font=font)
        x0, y0, x1, y1 = self.draw.textbbox(at, text, font=font)
        width, height = self.size
        self.drawn.append((text, (x0 / width, y0 / height, x1 / width, y1 / height)))


def render_page(
    paragraphs: Sequence[str], *, dpi: int = 300, columns: int = 1, font_pt: float = 11,
    title: str | None = None, rotate: int = 0,
) -> ScannedPage:  # fmt: skip
    """An A4 page of ``paragraphs``, word-wrapped in one or two columns, as a scanner sees it.

    Text that does not fit above the bottom margin is left off (and out of ``text``). A
    ``title`` is drawn in bold across the full width above the columns. ``rotate`` (90, 180,
    270) turns the finished page counter-clockwise, as a page put on the scanner sideways.
    """
    canvas = _Canvas(dpi)
    width, height = canvas.size
    pixels = round(font_pt * dpi / 72)
    margin, gutter = round(MARGIN_INCHES * dpi), round(GUTTER_INCHES * dpi)
    kept: list[str] = []
    top = margin
    if title:
        canvas.line(title, (margin, top), _fonts_for([title], round(pixels * 1.6), bold=True))
        kept.append(title)
        top += round(pixels * 1.6 * LINE_PITCH + pixels * PARAGRAPH_GAP * 2)
    column_width = (width - 2 * margin - (columns - 1) * gutter) / columns
    frames = [(round(margin + c * (column_width + gutter)), top) for c in range(columns)]
    font = _fonts_for(paragraphs, pixels)
    kept += _flow(
        canvas, paragraphs, font, frames, column_width=column_width, bottom=height - margin
    )
    image = canvas.image.rotate(rotate, expand=True) if rotate % 360 else canvas.image
    return ScannedPage(image, "\n".join(kept), canvas.drawn, dpi, rotate % 360)


def _flow(
    canvas: _Canvas, paragraphs: Sequence[str], font: Font, frames: list[tuple[int, int]], *,
    column_width: float, bottom: int,
) -> list[str]:  # fmt: skip
    """Draw paragraphs down the columns (``frames``: each column's top-left) until ``bottom``;
    the text drawn, by paragraph (the last one cut where the page ended)."""
    pitch, gap = round(font.size * LINE_PITCH), round(font.size * PARAGRAPH_GAP)
    column, (x, y) = 0, frames[0]
    kept: list[str] = []
    for paragraph in paragraphs:
        end = 0
        for start, end_of_line in wrap(paragraph, font, column_width):
            if y + pitch > bottom:
                column += 1
                if column == len(frames):
                    return [*kept, paragraph[:end]] if end else kept
                x, y = frames[column]
            canvas.line(paragraph[start:end_of_line], (x, y), font)
            y, end = y + pitch, end_of_line
        kept.append(paragraph)
        y += gap
    return kept


def render_table(
    rows: Sequence[Sequence[str]], *, dpi: int = 300, font_pt: float = 11
) -> ScannedPage:
    """An A4 page holding one bordered table of ``rows`` (the first is the header, in bold).

    ``text`` is the table row by row, cells joined by a space; ``lines`` are the cells.
    """
    canvas = _Canvas(dpi)
    pixels = round(font_pt * dpi / 72)
    cells = [cell for row in rows for cell in row]
    font, bold = _fonts_for(cells, pixels), _fonts_for(cells, pixels, bold=True)
    pad = round(pixels * 0.6)
    columns = max(len(row) for row in rows)
    widths = [
        max(bold.getlength(row[c]) for row in rows if c < len(row)) + 2 * pad
        for c in range(columns)
    ]
    row_height = round(pixels * LINE_PITCH + 2 * pad)
    left = top = round(MARGIN_INCHES * dpi)
    xs = [left + round(sum(widths[:c])) for c in range(columns + 1)]
    ys = [top + r * row_height for r in range(len(rows) + 1)]
    rule = max(1, round(dpi / 100))
    for x in xs:
        canvas.draw.line([(x, ys[0]), (x, ys[-1])], fill=0, width=rule)
    for y in ys:
        canvas.draw.line([(xs[0], y), (xs[-1], y)], fill=0, width=rule)
    for r, row in enumerate(rows):
        for c, cell in enumerate(row):
            canvas.line(cell, (xs[c] + pad, ys[r] + pad), bold if r == 0 else font)
    text = "\n".join(" ".join(row) for row in rows)
    return ScannedPage(canvas.image, text, canvas.drawn, dpi)


def degrade(
    page: ScannedPage, *, seed: int = 0, skew: float = 0.5, blur: float = 0.7,
    noise: float = 10.0, quality: int = 60,
) -> ScannedPage:  # fmt: skip
    """``page`` as a cheap office scanner returns it: turned ``skew`` degrees counter-clockwise,
    blurred (Gaussian radius ``blur`` at 300 dpi, scaled with the resolution), with grain
    (Gaussian, ``noise`` grey levels) and saved as a JPEG of ``quality``. Boxes follow the skew.
    """
    import io

    import numpy as np
    from PIL import ImageFilter

    image = page.image.rotate(skew, resample=Image.Resampling.BICUBIC, fillcolor=255)
    image = image.filter(ImageFilter.GaussianBlur(blur * page.dpi / 300))
    grain = np.random.default_rng(seed).normal(0.0, noise, (image.height, image.width))
    pixels = np.clip(np.asarray(image, dtype=np.float64) + grain, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=quality)
    buffer.seek(0)
    upright = page.image.size[::-1] if page.rotate in (90, 270) else page.image.size
    lines = [(text, _skew_box(box, skew, upright)) for text, box in page.lines]
    return dataclasses.replace(page, image=Image.open(buffer).convert("L"), lines=lines)


def _skew_box(box: Box, degrees: float, size: tuple[int, int]) -> Box:
    """A box's bounds once the page (``size`` pixels) turns ``degrees`` about its centre."""
    width, height = size
    cos, sin = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    points = []
    for u, v in ((box[0], box[1]), (box[2], box[1]), (box[0], box[3]), (box[2], box[3])):
        dx, dy = (u - 0.5) * width, (v - 0.5) * height
        points.append((0.5 + (dx * cos + dy * sin) / width, 0.5 + (dy * cos - dx * sin) / height))
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    return (min(xs), min(ys), max(xs), max(ys))


def image_pdf(path: Path, images: Sequence[Image.Image], dpi: int) -> Path:
    """A PDF of page images and no text layer (as a scanner writes it), each page sized so the
    image is at ``dpi``: an A4 image at any resolution makes an A4 page."""
    first, *rest = [image.convert("L") for image in images]
    first.save(path, "PDF", save_all=True, append_images=rest, resolution=float(dpi))
    return path


def normalise(text: str, language: str) -> str:
    """Text as ``cer`` compares it: NFKC (full-width Latin letters, digits and the punctuation
    in U+FF01..FF5E, such as "，：；（）", become ASCII), then whitespace collapsed to single
    spaces for English ("en"), removed for Chinese and mixed text ("zh", "mixed": where a space
    goes between a Chinese and a Latin word is a matter of style)."""
    if language not in {"en", "zh", "mixed"}:
        raise ValueError(f"language {language!r}: expected 'en', 'zh' or 'mixed'")
    text = unicodedata.normalize("NFKC", text)
    if language == "en":
        return re.sub(r"\s+", " ", text).strip()
    return re.sub(r"\s+", "", text)


def cer(reference: str, hypothesis: str, *, language: str) -> float:
    """Character error rate: edits (Levenshtein) to turn ``hypothesis`` into ``reference``, over
    the reference's length, both normalised by ``normalise`` for ``language`` ("en", "zh" or
    "mixed")."""
    from rapidfuzz.distance import Levenshtein  # a dependency of unstructured, which we ship

    ref, hyp = normalise(reference, language), normalise(hypothesis, language)
    if not ref:
        return 0.0 if not hyp else 1.0
    return Levenshtein.distance(ref, hyp) / len(ref)
