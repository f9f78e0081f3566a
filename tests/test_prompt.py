"""The prompt: greeting as the first stored turn, scenes with several speakers, example
dialogue as marked example turns — through the core with a FakeModel on a real SQLite file."""

from __future__ import annotations

from bot.characters import Character
from bot.prompt import EXAMPLES_END, build_prompt, example_turns
from tests.conftest import MakeCore
from tests.fakes import FakeModel, RecordingTarget
from tests.test_core import inbound

MARA = Character(
    name="Mara",
    description="A starship navigator.",
    greeting="Welcome aboard, {{user}}!",
    example_dialogue="<START>\n{{user}}: Is it safe?\n{{char}}: Safer than a spaceport.\n"
    "I plot every jump twice.\n<START>\n{{user}}: Coffee?\n{{char}}: Always.",
)
BRAM = Character(name="Bram", description="A lighthouse keeper with a cat named Fathom.")


def roles(messages: list[dict[str, str]]) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in messages]


async def test_greeting_is_stored_as_the_first_turn_and_enters_history(
    make_core: MakeCore,
) -> None:
    model = FakeModel(["Nebula run."])
    core = await make_core(model=model, characters=[MARA, BRAM])
    target = RecordingTarget()
    greeting_id = await core.greet("test", "c1", None, "Sam", target)
    assert target.text == "Welcome aboard, Sam!"
    await core.handle(inbound("Where are we going?"), RecordingTarget())
    greeting, user, reply = await core.store.list_messages()
    assert greeting.id == greeting_id and greeting.role == "assistant"
    assert greeting.character == "Mara" and greeting.parent_id is None
    assert user.parent_id == greeting.id and reply.parent_id == user.id
    # The greeting can be rated like any reply: its platform message is one of its parts.
    assert await core.vote("test", "c1", next(iter(target.messages)), "42", 1)
    turns = roles(model.requests[0].messages)
    after_examples = turns[turns.index(("system", EXAMPLES_END.replace("{{user}}", "Sam"))) + 1 :]
    assert after_examples == [
        ("assistant", "Welcome aboard, Sam!"),
        ("user", "Where are we going?"),
    ]


async def test_example_dialogue_becomes_marked_example_turns() -> None:
    turns = example_turns(MARA, "Sam")
    assert turns[0]["role"] == "system" and "examples only" in turns[0]["content"]
    assert roles(turns[1:-1]) == [
        ("user", "Is it safe?"),
        ("assistant", "Safer than a spaceport.\nI plot every jump twice."),
        ("user", "Coffee?"),
        ("assistant", "Always."),
    ]
    assert turns[-1] == {"role": "system", "content": EXAMPLES_END.replace("{{user}}", "Sam")}
    # Free text that is not written as turns stays in the persona.
    prose = Character(name="Pip", example_dialogue="Pip hoots a lot.")
    assert example_turns(prose, "Sam") == []
    prompt = build_prompt(FakeModel(), prose, [], 1000, "Sam")
    assert "Example dialogue: Pip hoots a lot." in prompt[0]["content"]


async def test_three_character_scene_keeps_each_identity(make_core: MakeCore) -> None:
    pip = Character(name="Pip", description="A clockwork owl.")
    model = FakeModel(["Welcome!", "Hoo.", "Fathom.", "Bram: Fathom, I said.\nMara: ok"])
    core = await make_core(model=model, characters=[MARA, BRAM, pip])
    await core.handle(inbound("Mara, hello"), RecordingTarget())
    await core.handle(inbound("Pip, hi", author_name="Alex", author_id="7"), RecordingTarget())
    await core.handle(inbound("Bram, what is your cat called?"), RecordingTarget())
    system, *turns = model.requests[2].messages
    # Others' lines are user turns tagged [Name], never "Name:", so the model is not shown
    # a pattern of writing as them; the system prompt says who else is present.
    assert "Also in this scene: Mara, Pip, Alex, Sam." in system["content"]
    assert "[Mara] Welcome!" in turns[0]["content"] and "[Pip] Hoo." in turns[0]["content"]
    assert "[Sam] Mara, hello" in turns[0]["content"]
    assert all("Mara:" not in t["content"] for t in turns)
    assert [t["role"] for t in turns if t["role"] != "system"] == ["user"]
    # Bram's own earlier line is his assistant turn.
    await core.handle(inbound("Bram, again?"), RecordingTarget())
    last = roles(model.requests[3].messages)
    assert ("assistant", "Fathom.") in last
    reply = (await core.store.list_messages())[-1]
    assert reply.text == "Fathom, I said."  # own tag stripped, Mara's invented turn cut
