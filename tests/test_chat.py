"""The chat template: a conversation as a character model's prompt, and where its reply ends."""

from __future__ import annotations

import pytest

from textgen.errors import TextgenError
from textgen.sample.chat import ChatMessage, ChatTemplate, unescape

CONVERSATION = [
    ChatMessage("system", "A quiet scene."),
    ChatMessage("user", "Who goes there?"),
    ChatMessage("assistant", "A friend."),
    ChatMessage("user", "Speak, friend."),
]


def test_default_lays_messages_out_as_paragraphs_and_stops_at_a_blank_line():
    rendered = ChatTemplate().render(CONVERSATION)
    assert rendered.prompt == "A quiet scene.\n\nWho goes there?\n\nA friend.\n\nSpeak, friend.\n\n"
    assert rendered.stop == "\n\n"


def test_a_dialogue_template_names_speakers_and_opens_the_reply():
    template = ChatTemplate("{name}:\n{content}\n\n", reply="JULIET:\n")
    rendered = template.render(
        [ChatMessage("user", "But soft!", "ROMEO"), ChatMessage("assistant", "Ay me.")]
    )
    assert rendered.prompt == "ROMEO:\nBut soft!\n\nassistant:\nAy me.\n\nJULIET:\n"
    assert rendered.stop == "\n\n"
    # Without a reply of its own, the reply opens as an assistant's message would.
    by_role = ChatTemplate("{role}:\n{content}\n\n")
    assert by_role.reply_prefix == "assistant:\n"
    assert by_role.render([ChatMessage("user", "Hi")]).prompt == "user:\nHi\n\nassistant:\n"


def test_empty_messages_add_nothing_and_an_empty_conversation_is_refused():
    template = ChatTemplate("{role} {content}\n")
    empty = ChatMessage("user", "")
    messages = [empty, ChatMessage("system", "Be brief."), empty]
    assert template.render(messages).prompt == "system Be brief.\nassistant "
    assert ChatTemplate().render([ChatMessage("user", "")]).prompt == ""
    with pytest.raises(TextgenError, match="at least one message"):
        ChatTemplate().render([])


def test_unknown_roles_are_refused_by_position():
    with pytest.raises(TextgenError, match=r"messages\[1\]\.role must be one of .* got 'tool'"):
        ChatTemplate().render([ChatMessage("user", "a"), ChatMessage("tool", "b")])


def test_a_template_that_ends_at_its_content_sets_no_stop():
    assert ChatTemplate("> {content}").stop is None
    assert ChatTemplate("> {content}").render([ChatMessage("user", "a")]).prompt == "> a> "


def test_braces_content_and_names_are_taken_literally():
    template = ChatTemplate("{{{role}}} {content}\n")
    rendered = template.render([ChatMessage("user", "{content} {role}", "{x}")])
    assert rendered.prompt == "{user} {content} {role}\n{assistant} "


@pytest.mark.parametrize(
    "message, fragment",
    [
        ("{role}: hello", "{content} once"),
        ("{content}{content}", "{content} once"),
        ("{speaker}: {content}", "names {speaker}"),
        ("{}: {content}", "names {}"),
        ("{content:>10}", "no format spec"),
        ("{content!r}", "no format spec"),
        ("{content", "chat template"),
        ("}{content}", "chat template"),
    ],
)
def test_bad_templates_are_refused_in_one_line(message, fragment):
    with pytest.raises(TextgenError, match=".*") as caught:
        ChatTemplate(message)
    assert fragment in str(caught.value) and "\n" not in str(caught.value)


def test_command_line_escapes():
    assert unescape(r"{role}:\n{content}\n\n") == "{role}:\n{content}\n\n"
    assert unescape(r"a\tb\\n\q") == "a\tb\\n\\q"
    template = ChatTemplate.from_options(r"{name}:\n{content}\n\n", r"JULIET:\n")
    assert template == ChatTemplate("{name}:\n{content}\n\n", "JULIET:\n")
    assert ChatTemplate.from_options() == ChatTemplate()
