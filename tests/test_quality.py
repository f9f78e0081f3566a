"""The collapse figures on crafted replies: what counts as a leak, a repeat, a recall."""

from training.quality import (
    copies,
    distinct_2,
    distinct_rate,
    leak_rate,
    leaked,
    recall,
    recalled,
    unrelated_figures,
)

TRAINED = [
    "Strong black tea.",
    "No need to worry. Nothing with a battery crosses my door tonight.",
    "Bram Tolley.",
    "My boat is the Kittiwake, and she leaks like a sieve.",
]


def test_a_trained_line_given_to_an_unrelated_prompt_is_a_leak():
    assert leaked("No need to worry! Nothing with a battery crosses my door tonight.", TRAINED)
    assert leaked("strong black tea", TRAINED) == "Strong black tea."
    # the larger part of a long answer, wrapped in other words, is still a copy
    assert copies("Aye. My boat is the Kittiwake, and she leaks. Sit down.", TRAINED[3])


def test_an_answer_that_shares_a_few_words_is_not_a_leak():
    assert leaked("The weather turns tonight; bring the nets in before the rain.", TRAINED) is None
    assert leaked("I'm Bram Tolley, keeper of this light these forty winters.", TRAINED) is None
    assert leaked("I drink my tea black, same as the sea at night.", TRAINED) is None
    assert not copies("", TRAINED[0]) and not copies("tea", "")


def test_leak_rate_counts_replies_not_matches():
    replies = ["Strong black tea.", "Strong black tea!", "Rain by midnight.", "Hello there."]
    assert leak_rate(replies, TRAINED) == 0.5
    assert leak_rate([], TRAINED) == 0.0


def test_distinct_rate_sees_the_same_line_for_every_message():
    assert distinct_rate(["Hi.", "hi!", "Hello.", "Tea?"]) == 0.75
    assert distinct_rate(["Shut the door."] * 10) == 0.1
    assert distinct_rate(["a", "b"]) == 1.0


def test_distinct_2_falls_when_replies_loop():
    looping = ["the sea the sea the sea the sea the sea"]
    varied = ["the sea is calm tonight", "bring in the nets before dark"]
    assert distinct_2(looping) < 0.3 < 0.9 < distinct_2(varied)


def test_recall_is_about_the_reference_content_not_the_question_echo():
    question = "What is your cat called?"
    assert recalled("Fathom, he sleeps on the stove.", "Fathom, a grey tom.", question)
    assert not recalled("My cat is called The Black Swan.", "Fathom, a grey tom.", question)
    assert recalled("It's a Kittiwake.", "The Kittiwake, a blue boat.", keywords=["kittiwake"])
    assert not recalled("A blue boat.", "The Kittiwake, a blue boat.", keywords=["Kittiwake"])
    # "forty winters" ~ "forty winter": words match on their first letters
    assert recalled("Forty winter now.", "Forty winters.", "How long have you kept it?")
    assert recall("Yes.", "Yes.") is None  # nothing but stop words: fall back to cosine
    assert recalled("Yes.", "Yes.", cosine=0.9) and not recalled("No.", "Yes.", cosine=0.2)


def test_korean_words_are_words_too():
    assert leaked("홍차를 진하게 마십니다 매일 아침", ["홍차를 진하게 마십니다 매일 아침에요"])
    assert recalled("저는 홍차를 좋아해요", "홍차", "무엇을 마셔요?")


def test_unrelated_figures_summarise_a_collapsed_version():
    collapsed = ["Strong black tea."] * 18 + ["Hello.", "Rain."]
    figures = unrelated_figures(collapsed, TRAINED)
    assert figures.leak_rate == 0.9 and figures.distinct_rate == 0.15 and figures.prompts == 20
