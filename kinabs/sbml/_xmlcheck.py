"""A streaming check of SBML text before libsbml sees it: well-formed, no DTD, not too deep.

libsbml builds its XML and MathML trees recursively in C++; a file nested a few thousand
elements deep overflows the C stack and kills the whole process with a segmentation fault
(measured with libsbml 5.21: 5,150 nested ``<apply>`` on an 8 MiB main-thread stack, about
650 on a 1 MiB thread stack, about 330 on 512 KiB; notes and annotations crash deeper).
Python cannot catch that, so the depth is counted here first, with Python's own expat
parser, which keeps no tree and never recurses.

:data:`MAX_XML_DEPTH` is 256, libxml2's own default limit: real models nest under 20 levels
(the deepest file of the SBML Test Suite and of the shared models is 17), while 256 stays
below the crash depth even on a 512 KiB thread stack, and kinabs' math conversion gives up
near 350 levels of math anyway.

The same pass refuses any ``<!DOCTYPE>``: SBML never uses a DTD, and libsbml expands the
entities a DTD declares (an "entity bomb" grows a small file into gigabytes). Raising in
the DOCTYPE handler stops expat before the DTD's entity declarations are even read, and
expat never loads external entities or DTDs here (no handler for them is set).

Example:
    >>> from kinabs import SBMLError
    >>> from kinabs.sbml._xmlcheck import check_xml_text
    >>> check_xml_text("<sbml><model/></sbml>", "the SBML text")
    >>> try:
    ...     check_xml_text("<a>" * 300 + "</a>" * 300, "deep.xml")
    ... except SBMLError as e:
    ...     print(e.summary[:60])
    deep.xml: XML elements are nested 300 deep (first over the l
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import os
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO
from xml.parsers import expat

from kinabs._errors import SBMLError

__all__ = ["MAX_XML_DEPTH", "MAX_SBML_MB", "check_xml_file", "check_xml_text"]

#: The deepest element nesting kinabs passes on to libsbml (see the module docstring).
MAX_XML_DEPTH = 256
#: The most SBML text (MiB, after decompression) a file may hold, unless the environment
#: variable ``KINABS_MAX_SBML_MB`` says otherwise. The largest models of the field are tens
#: of MiB (Froehlich 2018, 1,200 species: under 10 MiB); libsbml holds several times a
#: file's size in memory, and a compressed "bomb" of a few KiB can unpack to gigabytes.
MAX_SBML_MB = 256
_CHUNK = 1 << 16


def _limit_mb() -> float:
    text = os.environ.get("KINABS_MAX_SBML_MB", "")
    if not text:
        return float(MAX_SBML_MB)
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise SBMLError(f"KINABS_MAX_SBML_MB must be a positive number of MiB; got {text!r}. "
                        f"Unset it for the default ({MAX_SBML_MB}).")
    return value


class _Scan:
    """One expat pass that counts nesting and refuses a DOCTYPE; no tree is kept."""

    def __init__(self, name: str, encoding: str | None = None):
        self.name = name
        self.depth = 0
        self.deepest = 0
        self.first_over: tuple[str, int] | None = None  # (tag, line) of the first too deep
        self.head = b""  # the document's first bytes, to tell "not XML at all" apart
        self.parser = p = expat.ParserCreate(encoding)
        # Never read external DTDs or parameter entities (the default, made explicit).
        p.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
        p.StartDoctypeDeclHandler = self._doctype
        p.EntityDeclHandler = self._entity
        p.StartElementHandler = self._start
        p.EndElementHandler = self._end

    def _start(self, tag: str, _attrs) -> None:
        self.depth += 1
        if self.depth > self.deepest:
            self.deepest = self.depth
            if self.depth > MAX_XML_DEPTH and self.first_over is None:
                self.first_over = (tag, self.parser.CurrentLineNumber)

    def _end(self, _tag: str) -> None:
        self.depth -= 1

    def _doctype(self, doctype: str, *_ids) -> None:
        raise SBMLError(
            f"{self.name}: line {self.parser.CurrentLineNumber} has a <!DOCTYPE {doctype} ...> "
            "declaration; expected none, as SBML never uses a DTD. kinabs refuses it because "
            "a DTD can declare entities that expand a small file into gigabytes or read other "
            "files. Delete the <!DOCTYPE ...> declaration.")

    def _entity(self, entity: str, *_rest) -> None:
        # Unreachable while _doctype raises (entities live in a DTD); kept as a second lock.
        raise SBMLError(f"{self.name}: line {self.parser.CurrentLineNumber} declares the XML "
                        f"entity '{entity}'; SBML files declare no entities. Remove it.")

    def feed(self, data: bytes, final: bool = False) -> None:
        if len(self.head) < 1024:
            self.head += data[:1024]
        try:
            self.parser.Parse(data, final)
        except expat.ExpatError as e:
            self._too_deep()  # a file both deep and broken: the depth is what to report
            raise SBMLError(_not_xml(self.name, self.head, e),
                            [f"line {e.lineno}, column {e.offset + 1}: "
                             f"{expat.ErrorString(e.code)}"]) from None
        if final:
            self._too_deep()

    def _too_deep(self) -> None:
        if self.first_over is None:
            return
        tag, line = self.first_over
        raise SBMLError(
            f"{self.name}: XML elements are nested {self.deepest} deep (first over the limit: "
            f"<{tag}> at line {line}); kinabs reads at most {MAX_XML_DEPTH} levels, because "
            "libsbml crashes (segmentation fault) on very deep files. Real SBML models nest "
            "under 20 levels: the file is damaged or was generated wrongly; flatten the "
            "deepest math (for instance a long chain of nested <apply>) or regenerate the file.")


def _not_xml(name: str, head: bytes, e: expat.ExpatError) -> str:
    where = f"line {e.lineno}, column {e.offset + 1}: {expat.ErrorString(e.code)}"
    start = head.removeprefix(b"\xef\xbb\xbf").lstrip()
    if start and not start.startswith(b"<"):
        return (f"{name} is not XML ({where}), so it cannot be SBML. Expected an SBML "
                "document (<?xml ...?><sbml ...><model>...); got text that does not start "
                "with '<' (a CSV or another data file passed as the model?).")
    return (f"{name} is not well-formed XML ({where}), so libsbml cannot read it as SBML. "
            "The file may be truncated, corrupted or edited by hand; fix the XML at that "
            "line or export the model again.")


def check_xml_text(text: str, name: str) -> None:
    """Raise :class:`SBMLError` unless ``text`` is well-formed XML, without a DOCTYPE,
    nested at most :data:`MAX_XML_DEPTH` deep."""
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise SBMLError(f"{name} holds the character {text[e.start]!r} at index {e.start}, "
                        "which is not valid Unicode text (a lone surrogate), so it cannot be "
                        "XML. Decode the file with the right encoding, or pass its path to "
                        "kinabs.load_sbml.") from None
    # The text is already decoded, whatever its XML declaration says: force UTF-8, as
    # libsbml's string reader (and Python's expat, given a str) do.
    scan = _Scan(name, encoding="utf-8")
    for i in range(0, len(data), _CHUNK):
        scan.feed(data[i:i + _CHUNK])
    scan.feed(b"", final=True)


def check_xml_file(path: Path, name: str) -> None:
    """:func:`check_xml_text` for a file, read in chunks (``.gz``, ``.bz2`` and ``.zip``
    decompressed on the fly, as libsbml reads them)."""
    scan = _Scan(name)
    limit = _limit_mb()
    size = 0
    try:
        with _open(path) as f:
            while chunk := f.read(_CHUNK):
                size += len(chunk)
                if size > limit * (1 << 20):
                    packed = " after decompression" if path.suffix in (".gz", ".bz2",
                                                                        ".zip") else ""
                    raise SBMLError(
                        f"{name} holds more than {limit:g} MiB of SBML text{packed}; kinabs "
                        "reads at most that much (libsbml needs several times a file's size "
                        "in memory, and a small compressed file can unpack to gigabytes). "
                        "If the model really is that large, raise the limit with the "
                        "environment variable KINABS_MAX_SBML_MB.")
                scan.feed(chunk)
            scan.feed(b"", final=True)
    except (OSError, EOFError, zlib.error, zipfile.BadZipFile) as e:
        raise SBMLError(f"cannot read SBML file {name}: {e}. Expected a readable SBML "
                        "(.xml, or .xml.gz/.bz2/.zip) file; check the permissions and that "
                        "the file is complete.") from None


@contextlib.contextmanager
def _open(path: Path) -> Iterator[IO[bytes]]:
    # libsbml picks the decompressor by the file name's ending (case-sensitive); so does
    # this, so that both read the same bytes.
    suffix = path.suffix
    if suffix == ".gz":
        with gzip.open(path, "rb") as f:
            yield f
    elif suffix == ".bz2":
        with bz2.open(path, "rb") as f:
            yield f
    elif suffix == ".zip":
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            if not names:
                raise OSError(f"the zip archive {path} is empty")
            with archive.open(names[0]) as f:  # libsbml reads the archive's first file
                yield f
    else:
        with open(path, "rb") as f:
            yield f
