"""Hierarchical models (SBML Level 3 ``comp`` package) flattened into one core model.

A ``comp`` document builds its model from submodels: model definitions in the same file
or in other files (external model definitions), whose elements the top model may replace,
delete or convert. kinabs simulates SBML core, so such a document is flattened first by
libsbml's ``CompFlatteningConverter``: every submodel becomes elements of one flat model
(ids prefixed with the submodel's id, e.g. ``A__E``), replacements and deletions applied,
ports dropped (``leavePorts`` false). The flat model is then read like any other, so every
check of the reader (validity, unsupported features such as events or delays, NaN values)
applies to what the hierarchy means, not to how it is written.

External model definitions are files, so they get the same care as the main file: the
source must be a local file (no URL is fetched), a relative source is found beside the file
that names it (a document read from text has no folder, so only absolute sources work
there), and every external file passes the same XML check as the main one (well-formed, no
DTD, not too deep) before libsbml reads it.

Before flattening, libsbml validates the hierarchy (``comp`` rules included; units,
modelling-practice and SBO checks off, as for core models); errors that the reader only
warns about for core models (``tolerated``) do not stop it. A package that cannot be
flattened refuses with :class:`~kinabs.UnsupportedFeatureError`; harmless ones (layout,
render, groups) are stripped instead, as kinabs never reads them.

Example:
    >>> import libsbml
    >>> from kinabs.sbml._comp import flatten_comp
    >>> doc = libsbml.readSBMLFromString(
    ...     '<sbml xmlns="http://www.sbml.org/sbml/level3/version2/core" level="3" version="2"'
    ...     ' xmlns:comp="http://www.sbml.org/sbml/level3/version1/comp/version1"'
    ...     ' comp:required="true"><model id="top"><comp:listOfSubmodels>'
    ...     '<comp:submodel comp:id="A" comp:modelRef="inner"/></comp:listOfSubmodels></model>'
    ...     '<comp:listOfModelDefinitions><comp:modelDefinition id="inner"><listOfParameters>'
    ...     '<parameter id="k" value="2" constant="true"/></listOfParameters>'
    ...     '</comp:modelDefinition></comp:listOfModelDefinitions></sbml>')
    >>> flat = flatten_comp(doc, "the SBML text")
    >>> [p.getId() for p in flat.getModel().getListOfParameters()]
    ['A__k']
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from urllib.parse import unquote, urlsplit
from urllib.request import url2pathname

import libsbml

from kinabs._errors import SBMLError, UnsupportedFeatureError
from kinabs.sbml._messages import first, messages
from kinabs.sbml._xmlcheck import check_xml_file

__all__ = ["flatten_comp"]

#: Packages kinabs never reads; stripped before flattening (groups and render cannot be).
HARMLESS = ("layout", "render", "groups")
_SKIPPED_CHECKS = (libsbml.LIBSBML_CAT_UNITS_CONSISTENCY, libsbml.LIBSBML_CAT_MODELING_PRACTICE,
                   libsbml.LIBSBML_CAT_SBO_CONSISTENCY)
# libsbml's notes that a package could not be flattened (logged as warnings or errors).
_UNFLATTENABLE = {libsbml.CompFlatteningNotImplementedReqd,
                  libsbml.CompFlatteningNotImplementedNotReqd,
                  libsbml.CompFlatteningNotRecognisedReqd,
                  libsbml.CompFlatteningNotRecognisedNotReqd}


def flatten_comp(doc: libsbml.SBMLDocument, name: str, *,
                 tolerated: Collection[int] = ()) -> libsbml.SBMLDocument:
    """``doc`` with its ``comp`` hierarchy flattened (``doc`` itself when it has none).

    ``name`` names the document in messages ("'model.xml'"); relative sources of external
    model definitions are resolved against the document's location (``file:`` URI, set by
    :func:`kinabs.load_sbml`). ``tolerated``: libsbml error ids that do not stop the
    flattening (the reader reports them as warnings on the flat model). The error log is
    cleared afterwards, so later checks see only their own messages.

    Raises:
        SBMLError: an external model file is missing, unreadable or bad XML, or the
            hierarchy is invalid or cannot be flattened (with libsbml's messages).
        UnsupportedFeatureError: an external model is a URL, or the document uses a
            package that libsbml cannot flatten.
    """
    if not doc.isPackageEnabled("comp"):
        return doc
    _check_external_files(doc, name, _location(doc), set())
    for category in _SKIPPED_CHECKS:
        doc.setConsistencyChecks(category, False)
    doc.getErrorLog().clearLog()
    doc.checkConsistency()
    errors = messages(doc, skip=set(tolerated))
    if errors:
        raise SBMLError(f"{name} is not a valid hierarchical (comp) model: libsbml says "
                        f"{first(errors)}. Fix the model; all of libsbml's errors:", errors)
    doc.getErrorLog().clearLog()
    props = libsbml.ConversionProperties()
    props.addOption("flatten comp", True)
    props.addOption("leavePorts", False)
    props.addOption("performValidation", False)  # done above, with ``tolerated`` allowed
    props.addOption("abortIfUnflattenable", "all")
    props.addOption("stripUnflattenablePackages", False)
    strip = [p for p in HARMLESS if doc.isPackageEnabled(p)]
    if strip:
        props.addOption("stripPackages", ",".join(strip))
    location = _location(doc)
    if location is not None:
        props.addOption("basePath", str(location.parent))
    status = doc.convert(props)
    logged = [doc.getError(i) for i in range(doc.getNumErrors())]
    if any(e.getErrorId() in _UNFLATTENABLE for e in logged):
        packages = sorted({doc.getPlugin(i).getPackageName() for i in range(doc.getNumPlugins())}
                          - {"comp", *HARMLESS, "l3v2extendedmath"})
        raise UnsupportedFeatureError(
            None, f"SBML package(s) {packages} in a hierarchical (comp) model",
            "libsbml cannot flatten a comp model that uses them, and kinabs reads flat SBML "
            "core only. libsbml says: " + " ".join(logged[0].getMessage().split()))
    errors = messages(doc)
    if status != libsbml.LIBSBML_OPERATION_SUCCESS or errors:
        errors = errors or messages(doc, severity=libsbml.LIBSBML_SEV_WARNING)
        detail = (f"libsbml says {first(errors)}" if errors else
                  f"libsbml's converter returned status {status} without a message")
        raise SBMLError(f"{name}: cannot flatten the hierarchical (comp) model: {detail}. "
                        "All of libsbml's messages:", errors)
    doc.getErrorLog().clearLog()
    return doc


def _location(doc: libsbml.SBMLDocument) -> Path | None:
    """The file a document was read from (its ``file:`` location URI), if any."""
    uri = doc.getLocationURI()
    if not uri.startswith("file:"):
        return None
    return Path(url2pathname(unquote(urlsplit(uri).path))).resolve()


def _check_external_files(doc: libsbml.SBMLDocument, name: str, location: Path | None,
                          seen: set[Path]) -> None:
    """Check every external model file ``doc`` refers to, and theirs, before libsbml reads
    them: local, present, well-formed XML without a DTD, not too deep."""
    plugin = doc.getPlugin("comp")
    if plugin is None:
        return
    for i in range(plugin.getNumExternalModelDefinitions()):
        emd = plugin.getExternalModelDefinition(i)
        eid, source = emd.getId(), emd.getSource()
        what = f"external model definition '{eid}' (source '{source}') of {name}"
        parts = urlsplit(source)
        # A one-letter "scheme" is a Windows drive letter; file: is a path; others are URLs.
        if len(parts.scheme) > 1 and parts.scheme != "file":
            raise UnsupportedFeatureError(
                eid, "external model definition from a URL",
                f"kinabs reads external models from local files only, never from the "
                f"network; download '{source}' beside the model and refer to the file.")
        path = Path(url2pathname(unquote(parts.path)) if parts.scheme == "file" else source)
        if not path.is_absolute():
            if location is None:
                raise SBMLError(
                    f"{what}: a path relative to the model file, but the SBML was given as "
                    "text, which has no folder. Read the file with kinabs.load_sbml(path), "
                    "so that the external file is found beside it.")
            path = location.parent / path
        path = path.resolve()
        if not path.is_file():
            raise SBMLError(f"{what}: the file {path} does not exist. Expected the external "
                            "model file beside the model that names it; copy it there or "
                            "fix the 'source' attribute.")
        if path in seen:
            continue
        seen.add(path)
        check_xml_file(path, f"'{path}' ({what})")
        sub = libsbml.SBMLReader().readSBMLFromFile(str(path))
        errors = messages(sub)
        if errors:
            raise SBMLError(f"{what}: '{path}' is not valid SBML: libsbml says "
                            f"{first(errors)}. All of libsbml's errors:", errors)
        _check_external_files(sub, f"'{path}'", path, seen)


