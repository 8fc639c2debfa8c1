"""What the node accepts at association negotiation: storage SOP classes and transfer syntaxes (the conformance
statement in docs/dicom.md is this table)."""
from __future__ import annotations

from pydicom import uid

# Chest films arrive as CR, DX (for presentation or processing) or Secondary Capture with modality CR/DX.
IMAGE_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.1": "Computed Radiography Image Storage",
    "1.2.840.10008.5.1.4.1.1.1.1": "Digital X-Ray Image Storage - For Presentation",
    "1.2.840.10008.5.1.4.1.1.1.1.1": "Digital X-Ray Image Storage - For Processing",
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.2": "Multi-frame Grayscale Byte Secondary Capture Image Storage",
    "1.2.840.10008.5.1.4.1.1.7.3": "Multi-frame Grayscale Word Secondary Capture Image Storage",
}
# Objects a PACS forwards with a study (our own SR included): accepted, stored and skipped with a reason, so that
# routing a whole study to the node never fails the association.
NON_IMAGE_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.88.11": "Basic Text SR Storage",
    "1.2.840.10008.5.1.4.1.1.88.22": "Enhanced SR Storage",
    "1.2.840.10008.5.1.4.1.1.88.33": "Comprehensive SR Storage",
    "1.2.840.10008.5.1.4.1.1.88.34": "Comprehensive 3D SR Storage",
    "1.2.840.10008.5.1.4.1.1.88.59": "Key Object Selection Document Storage",
    "1.2.840.10008.5.1.4.1.1.11.1": "Grayscale Softcopy Presentation State Storage",
    "1.2.840.10008.5.1.4.1.1.104.1": "Encapsulated PDF Storage",
}
UNCOMPRESSED = [uid.ImplicitVRLittleEndian, uid.ExplicitVRLittleEndian, uid.DeflatedExplicitVRLittleEndian,
                uid.ExplicitVRBigEndian]
COMPRESSED = [uid.JPEGBaseline8Bit, uid.JPEGExtended12Bit, uid.JPEGLossless, uid.JPEGLosslessSV1,
              uid.JPEGLSLossless, uid.JPEGLSNearLossless, uid.JPEG2000Lossless, uid.JPEG2000, uid.RLELossless]


def image_transfer_syntaxes() -> list[str]:
    """Every transfer syntax whose pixel data this installation can decode (a codec plugin missing -> left out,
    so a sender transcodes instead of sending what we could not read)."""
    from pydicom.pixels import get_decoder

    usable = list(UNCOMPRESSED)
    for ts in COMPRESSED:
        try:
            if get_decoder(ts).is_available:
                usable.append(ts)
        except (NotImplementedError, ValueError):
            continue
    return [str(t) for t in usable]


def add_storage_contexts(ae) -> list[str]:
    """Add the node's supported presentation contexts to a pynetdicom AE; returns the image transfer syntaxes."""
    from pynetdicom.sop_class import Verification

    syntaxes = image_transfer_syntaxes()
    ae.add_supported_context(Verification)
    for sop_class in IMAGE_SOP_CLASSES:
        ae.add_supported_context(sop_class, syntaxes)
    for sop_class in NON_IMAGE_SOP_CLASSES:
        ae.add_supported_context(sop_class, [str(t) for t in UNCOMPRESSED])
    return syntaxes
