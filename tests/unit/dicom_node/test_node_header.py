"""The header attributes routing reads: single-frame images at the top level, enhanced images where they keep them."""

from __future__ import annotations

from pydicom import Dataset

from dicom_node.header import instance_attributes


def _item(**values: object) -> Dataset:
    item = Dataset()
    for keyword, value in values.items():
        setattr(item, keyword, value)
    return item


def _enhanced(shared: Dataset, **top: object) -> Dataset:
    ds = _item(Modality="CT", NumberOfFrames=2, **top)
    ds.SharedFunctionalGroupsSequence = [shared]
    ds.PerFrameFunctionalGroupsSequence = [_item(), _item()]
    return ds


def test_an_enhanced_image_gives_its_slice_thickness_body_part_and_agent_from_where_it_keeps_them() -> None:
    shared = _item(PixelMeasuresSequence=[_item(SliceThickness="0.625", PixelSpacing=["0.7", "0.7"])],
                   FrameAnatomySequence=[_item(AnatomicRegionSequence=[_item(
                       CodeValue="69536005", CodingSchemeDesignator="SCT", CodeMeaning="Head")])])
    ds = _enhanced(shared, ContrastBolusAgentSequence=[_item(CodeValue="C-B0322", CodingSchemeDesignator="SRT",
                                                             CodeMeaning="Iohexol")])
    attributes = instance_attributes(ds)
    assert (attributes["SliceThickness"], attributes["BodyPartExamined"], attributes["ContrastBolusAgent"]) == (
        0.625, "Head", "Iohexol")
    assert attributes["ImagePositionPatient"] is None  # per frame: the series geometry check leaves it to the loader


def test_the_top_level_wins_and_a_missing_group_stays_missing() -> None:
    ds = _enhanced(_item(PixelMeasuresSequence=[_item(SliceThickness="1.0")]), BodyPartExamined="CHEST")
    ds.PerFrameFunctionalGroupsSequence[0].FrameAnatomySequence = []
    attributes = instance_attributes(ds)
    assert (attributes["SliceThickness"], attributes["BodyPartExamined"], attributes["ContrastBolusAgent"]) == (
        1.0, "CHEST", None)
    single = _item(Modality="CT", SliceThickness="5.0", ContrastBolusAgentSequence=[_item(CodeValue="C-B0322")])
    assert instance_attributes(single)["ContrastBolusAgent"] == "C-B0322"  # coded only: declared all the same


def test_the_rest_of_the_contrast_module_is_kept_for_the_routing() -> None:
    given = _item(Modality="CT", ContrastBolusAgent="", ContrastBolusRoute="IV", ContrastBolusVolume="75",
                  ContrastFlowRate=["0", "0"])
    attributes = instance_attributes(given)
    assert (attributes["ContrastBolusAgent"], attributes["ContrastBolusRoute"], attributes["ContrastBolusVolume"],
            attributes["ContrastFlowRate"]) == (None, "IV", 75.0, [0.0, 0.0])


def test_a_malformed_optional_sequence_reads_as_absent_and_the_image_is_still_stored() -> None:
    ds = _enhanced(_item(PixelMeasuresSequence=[_item(SliceThickness="1.0")]))
    ds.PerFrameFunctionalGroupsSequence[0].add_new("FrameAnatomySequence", "OB", b"\x00\x01")  # not a sequence
    ds.add_new("ContrastBolusAgentSequence", "OB", b"\x00\x01")
    attributes = instance_attributes(ds)
    assert (attributes["SliceThickness"], attributes["BodyPartExamined"], attributes["ContrastBolusAgent"]) == (
        1.0, None, None)


def test_the_first_frame_s_own_group_wins_over_the_shared_one_as_in_the_loader() -> None:
    ds = _enhanced(_item(PixelMeasuresSequence=[_item(SliceThickness="5.0")]))
    ds.PerFrameFunctionalGroupsSequence[0].PixelMeasuresSequence = [_item(SliceThickness="1.25")]
    assert instance_attributes(ds)["SliceThickness"] == 1.25


def test_a_nan_or_infinite_number_is_read_as_absent() -> None:
    """JSON, and PostgreSQL's json column, have no NaN: before, such a slice was answered 0xA702 on every resend."""
    attributes = instance_attributes(_item(Modality="CT", SliceThickness="NaN", ImagePositionPatient=["0", "inf", "1"]))
    assert attributes["SliceThickness"] is None and attributes["ImagePositionPatient"] == [0.0, None, 1.0]


def test_an_enhanced_image_gives_its_kernel_and_orientation_for_the_routing() -> None:
    """An Enhanced CT bone kernel reached the router without a kernel (a negated kernel pattern let it pass) and an
    Enhanced CT sagittal reformat without an orientation (a job that failed instead of a not_axial audit)."""
    shared = _item(CTReconstructionSequence=[_item(ConvolutionKernel="H70h")],
                   PlaneOrientationSequence=[_item(ImageOrientationPatient=[0, 1, 0, 0, 0, -1])])
    attributes = instance_attributes(_enhanced(shared, SOPClassUID="1.2.840.10008.5.1.4.1.1.2.1"))
    assert (attributes["ConvolutionKernel"], attributes["ImageOrientationPatient"], attributes["SOPClassUID"]) == (
        "H70h", [0.0, 1.0, 0.0, 0.0, 0.0, -1.0], "1.2.840.10008.5.1.4.1.1.2.1")
