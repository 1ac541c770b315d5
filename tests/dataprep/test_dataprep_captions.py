"""The template captioner: deterministic, mentions scene, objects, counts and positions."""
from farslip.dataprep.captions import (TemplateCaptioner, article, count_phrase, join_words, parse_caption_reply,
                                    plural, position_phrase)


def test_language_helpers():
    assert [plural(w) for w in ("ship", "bus", "storage tank", "ferry", "boeing 737", "person", "match")] == [
        "ships", "buses", "storage tanks", "ferries", "boeing 737s", "people", "matches"]
    assert article("airport") == "an airport" and article("harbor") == "a harbor" and article("farmland") == "farmland"
    assert count_phrase(1, "airplane") == "an airplane"
    assert count_phrase(3, "ship") == "three ships"
    assert count_phrase(15, "vehicle") == "15 vehicles"
    assert join_words(["a", "b", "c"]) == "a, b and c"
    assert position_phrase([0, 0, 10, 10], 300, 300) == "in the upper left"
    assert position_phrase([140, 140, 160, 160], 300, 300) == "in the center"
    assert position_phrase([250, 280, 300, 300], 300, 300) == "in the lower right"


def test_template_captions_content():
    cap = TemplateCaptioner()
    objs = [{"category": "airplane", "box": [10, 10, 50, 50]}, {"category": "airplane", "box": [20, 200, 60, 240]},
            {"category": "airplane", "box": [30, 100, 70, 140]}, {"category": "vehicle", "box": [250, 250, 260, 256]}]
    c = cap(objs, 300, 300, scene="airport", land_cover={"road": 0.22, "water": 0.01}, gsd=0.5, key="x.jpg")
    assert set(c) == {"brief_caption", "global_caption", "detailed_caption"}
    assert c["brief_caption"] == "An airport with three airplanes and a vehicle."
    assert c["global_caption"].endswith("of an airport with three airplanes and a vehicle.")
    d = c["detailed_caption"]
    assert "three airplanes" in d and "on the left" in d and "in the lower right" in d
    assert "Road covers about 20% of the image." in d and "water" not in d  # under 5% is left out
    assert "0.5 m per pixel" in d
    assert len(d) > len(c["global_caption"]) > len(c["brief_caption"])
    # deterministic: same inputs, same text; the key only picks the opening phrase
    assert cap(objs, 300, 300, scene="airport", key="x.jpg") == cap(objs, 300, 300, scene="airport", key="x.jpg")
    openings = {cap(objs, 300, 300, key=f"{i}.jpg")["global_caption"].split(" of ")[0] for i in range(20)}
    assert len(openings) > 1


def test_template_without_scene_or_objects():
    cap = TemplateCaptioner()
    c = cap([], 100, 100)
    assert "no annotated objects" in c["global_caption"]
    c = cap([{"category": "ship", "box": [0, 0, 90, 90]}], 100, 100)
    assert c["brief_caption"] == "An aerial image with a ship."
    assert "The large ship is" in c["detailed_caption"]


def test_parse_caption_reply():
    assert parse_caption_reply('{"brief": "A port.", "detailed": "A port with ships."}') == {
        "brief": "A port.", "detailed": "A port with ships."}
    assert parse_caption_reply('```json\n{"brief": "A", "detailed": "B"}\n```') == {"brief": "A", "detailed": "B"}
    assert parse_caption_reply("Sure! Here: {\"detailed\": \"Two ships. Calm water.\"}")["brief"] == "Two ships."
    assert parse_caption_reply("A harbor with ships. Water is calm.") == {
        "brief": "A harbor with ships.", "detailed": "A harbor with ships. Water is calm."}
