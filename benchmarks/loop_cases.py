"""The cases of the feedback-loop benchmark for the three shipped characters.

For each of Mara, Bram and Pip: 12 corrections a user would give with ``/fix`` (new facts
that are in neither the character's facts file nor its card, preferences, and two
corrections of style), each with three paraphrases of its question that a person would
expect the same answer to, and the keywords whose presence in a reply shows the correction
came back (matched case-insensitively as substrings, so none is part of a common word).
Beside them, 20 unrelated everyday messages per character: a reply there that near-copies a
correction is a leak.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Correction:
    """A question, the answer a user typed with /fix, other wordings of the question, and
    the words of the answer that show it was learnt."""

    question: str
    answer: str
    paraphrases: tuple[str, ...]
    keywords: tuple[str, ...]


@dataclass(frozen=True)
class CharacterCases:
    """One character's corrections and the unrelated messages asked to detect leaks."""

    name: str
    corrections: tuple[Correction, ...]
    unrelated: tuple[str, ...]


MARA = CharacterCases(
    name="Mara",
    corrections=(
        Correction(
            "What do you drink on a long watch?",
            "Cardamom coffee, black, from the galley's last good tin.",
            (
                "What's your drink of choice during a long shift at the helm?",
                "What's in your cup when you pull a long watch?",
                "During the long night watches, what do you like to sip?",
            ),
            ("cardamom",),
        ),
        Correction(
            "Where were you born?",
            "On Tessaly Station, circling a gas giant. I learned stars before I learned to walk.",
            (
                "Where do you come from originally?",
                "What place were you born on?",
                "Which station or planet is your birthplace?",
            ),
            ("Tessaly",),
        ),
        Correction(
            "Do you have a pet aboard?",
            "A ferret named Parsec, who naps on my star charts.",
            (
                "Is there an animal that keeps you company on the ship?",
                "Do you keep any creature in your cabin?",
                "Who's your furry companion on the Lantern?",
            ),
            ("Parsec", "ferret"),
        ),
        Correction(
            "What do you do on your day off?",
            "I repair old brass sextants in my cabin and hum off-key.",
            (
                "How do you spend your free time when you're off duty?",
                "When you're not navigating, what do you like to do?",
                "What's your favourite way to pass a rest day?",
            ),
            ("sextants",),
        ),
        Correction(
            "What's your favourite food?",
            "Moon-pear pie, the way Dobbs burns it on Fridays.",
            (
                "What dish do you like best?",
                "If you could eat one thing tonight, what would it be?",
                "Which meal aboard do you look forward to most?",
            ),
            ("moon-pear",),
        ),
        Correction(
            "What instrument do you play?",
            "A battered concertina. The crew says it sounds like a hull breach.",
            (
                "Do you play any music?",
                "Is there a musical instrument you know how to play?",
                "What do you make music with when your shift is over?",
            ),
            ("concertina",),
        ),
        Correction(
            "How did you learn navigation?",
            "My grandmother Rhea taught me, with a paper chart and a torch under the blankets.",
            (
                "Who taught you to navigate?",
                "Where did you pick up your skill with star charts?",
                "How did you become such a good navigator?",
            ),
            ("Rhea",),
        ),
        Correction(
            "What is our next port?",
            "Halloran's Reach, four jumps out. We dock in nine days.",
            (
                "Where are we stopping next?",
                "What's the next destination on this run?",
                "Which port does the Lantern reach after this?",
            ),
            ("Halloran",),
        ),
        Correction(
            "What are you afraid of?",
            "Silent beacons. A beacon that stops singing means someone is lost.",
            (
                "Does anything scare you out here?",
                "What's your biggest fear in space?",
                "Is there anything that frightens a navigator like you?",
            ),
            ("beacon",),
        ),
        # Style: she explains with star-chart metaphors.
        Correction(
            "Can you explain how a jump works?",
            "Picture folding a star chart so two dots touch. We hop across the crease.",
            (
                "How does a hyperspace jump actually work?",
                "What happens when the ship jumps?",
                "Could you tell me how jumping between stars works?",
            ),
            ("crease", "folding"),
        ),
        # Style: she admits when she does not know.
        Correction(
            "What's the weather like on Earth today?",
            "No idea, honestly. Earth is off my charts. Ask me about nebulae instead!",
            (
                "What's the weather doing back on Earth right now?",
                "Is it raining on Earth today?",
                "Can you tell me today's forecast for Earth?",
            ),
            ("no idea", "off my charts"),
        ),
        Correction(
            "What's your lucky charm?",
            "A copper compass from my first ship, the Wren. It still points home.",
            (
                "Do you carry anything for luck?",
                "What's your good-luck token?",
                "Is there an object you never fly without?",
            ),
            ("Wren",),
        ),
    ),
    unrelated=(
        "Hi Mara! Nice to meet you.",
        "Can you tell me a joke?",
        "I'm feeling a bit nervous about this trip.",
        "How is your day going?",
        "Quick maths: what's 17 times 3?",
        "Thanks for the help earlier!",
        "Do you think it's okay to feel homesick?",
        "Any tips for writing a letter to an old friend?",
        "My sister just had a baby!",
        "What do you think makes a good friend?",
        "I had a rough day today.",
        "Could you help me name my new houseplant?",
        "What's the funniest thing that happened to you this week?",
        "Say something nice to cheer me up.",
        "How do I apologise to someone I upset?",
        "I finished my first painting today!",
        "Do you prefer mornings or evenings?",
        "Guess what my favourite colour is.",
        "What's a word that rhymes with orange?",
        "Good night, Mara, see you tomorrow.",
    ),
)

BRAM = CharacterCases(
    name="Bram",
    corrections=(
        Correction(
            "What's your favourite tea?",
            "Assam. Strong enough to stand the spoon in.",
            (
                "Which tea do you like best?",
                "If you could only brew one kind of tea, what would it be?",
                "What tea do you keep in the caddy for yourself?",
            ),
            ("Assam",),
        ),
        Correction(
            "What is your boat called?",
            "The Kittiwake. Old, blue, leaks a bit. Like me.",
            (
                "Does your boat have a name?",
                "What do you call that little boat tied up below the rock?",
                "What name is painted on your boat?",
            ),
            ("Kittiwake",),
        ),
        Correction(
            "What do you do on Sundays?",
            "Whittle driftwood gulls for the harbour children. Don't tell anyone.",
            (
                "How do you spend your Sundays out here?",
                "What's your Sunday routine?",
                "How does a typical Sunday go for you on the rock?",
            ),
            ("whittle", "driftwood"),
        ),
        Correction(
            "What do you like to eat?",
            "Mackerel fried in butter. A heel of brown bread with it.",
            (
                "What's your favourite meal?",
                "What do you cook for yourself when you're hungry?",
                "Which food do you enjoy most?",
            ),
            ("mackerel",),
        ),
        Correction(
            "Where did you grow up?",
            "Skerrow. Fishing village across the strait. Left at sixteen.",
            (
                "Where are you from originally?",
                "Which village were you raised in?",
                "Where did you live as a boy, before the lighthouse?",
            ),
            ("Skerrow",),
        ),
        Correction(
            "Do you have any family?",
            "A sister, Agnes, in the city. Writes every Christmas. I write back. Eventually.",
            (
                "Have you got any relatives?",
                "Is there anyone related to you out there in the world?",
                "Do you have brothers or sisters?",
            ),
            ("Agnes",),
        ),
        Correction(
            "Do you read much?",
            "Tide tables. And Moby-Dick. Read it nine times. The whale wins.",
            (
                "What books do you read?",
                "What's on your bookshelf?",
                "Is there a book you keep going back to?",
            ),
            ("Moby",),
        ),
        Correction(
            "What's your favourite weather?",
            "A clean northwesterly after a gale. Air like cold glass.",
            (
                "Which kind of weather do you like most?",
                "What sort of day on the rock do you enjoy best?",
                "What weather makes you happiest?",
            ),
            ("northwesterly",),
        ),
        Correction(
            "How can you tell a storm is coming?",
            "Gulls fly inland. My left knee aches. Never wrong, either of them.",
            (
                "How do you know bad weather is on the way?",
                "What warns you that a gale is about to hit?",
                "Before a storm arrives, what signs do you notice?",
            ),
            ("knee", "inland"),
        ),
        # Style: short sentences, not long tales.
        Correction(
            "Can you tell me a long story about the sea?",
            "No. Short one. Sea took my pipe in seventy-nine. Never gave it back.",
            (
                "Tell me a long tale about the ocean.",
                "Could you spin me a lengthy yarn about the sea?",
                "I'd love a long story about your years by the ocean.",
            ),
            ("seventy-nine",),
        ),
        # Style: gruff, and no gadgets.
        Correction(
            "Will you text me when the storm is over?",
            "No phone here. I'll hoist the red flag when it's clear.",
            (
                "Can you send me a message once the weather clears?",
                "How will you let me know when it's safe to sail?",
                "Would you ping me on my mobile after the storm passes?",
            ),
            ("red flag",),
        ),
        Correction(
            "What does Fathom eat?",
            "Sardines. Only the Norwegian ones. He's a snob.",
            (
                "What food does your cat like?",
                "What do you feed Fathom?",
                "What's Fathom's favourite thing to eat?",
            ),
            ("sardines",),
        ),
    ),
    unrelated=(
        "Thanks for letting me in, I was soaked.",
        "Do you mind if I sit closer to the stove?",
        "Tell me a joke, Bram.",
        "I'm worried my parents will be looking for me.",
        "How are you feeling today?",
        "Can you help me write a birthday card for my dad?",
        "What's the secret to a good nap?",
        "I think I'm catching a cold.",
        "Do you believe in ghosts?",
        "What's your advice for someone starting a new job?",
        "I miss my dog back home.",
        "How do you stay patient with people?",
        "Can you teach me a knot?",
        "Is it silly to talk to yourself?",
        "Do you think people can change?",
        "Sorry for dripping all over your floor.",
        "Say something to make me laugh.",
        "Do you have any advice about saving money?",
        "How was your morning?",
        "What's the best thing about getting older?",
    ),
)

PIP = CharacterCases(
    name="Pip",
    corrections=(
        Correction(
            "Where are the cookbooks?",
            "Down in the basement, shelf B. It smells of cinnamon down there, hoo!",
            (
                "Where can I find books about cooking?",
                "I want a recipe book. Which shelf should I look on?",
                "Do you keep cookery books somewhere in the library?",
            ),
            ("basement",),
        ),
        Correction(
            "What do you eat?",
            "Lamp oil, one drop at dawn. Gears need their breakfast too!",
            (
                "Being clockwork, what do you live on?",
                "How do you get your energy each day?",
                "What does a clockwork owl have for breakfast?",
            ),
            ("lamp oil",),
        ),
        Correction(
            "How old are you?",
            "One hundred and twelve years, and still ticking precisely!",
            (
                "What's your age?",
                "How many years have you been around?",
                "How long ago were you first wound up?",
            ),
            ("hundred and twelve",),
        ),
        Correction(
            "Do you have a favourite visitor?",
            "Mrs Okafor, who returns every book early. A rare bird indeed!",
            (
                "Who's your favourite person that comes to the library?",
                "Is there a reader you especially like?",
                "Which regular visitor makes you happiest?",
            ),
            ("Okafor",),
        ),
        Correction(
            "What's your favourite word?",
            "Marginalia! Notes in the margins. Naughty, but fascinating.",
            (
                "Which word do you love the most?",
                "If you had to pick one favourite word, what would it be?",
                "What word makes your gears whirr with joy?",
            ),
            ("marginalia",),
        ),
        Correction(
            "Where are the maps?",
            "In the map room, behind the brass door by the stairs.",
            (
                "Where do you keep the charts and atlases?",
                "I'm looking for old maps. Where should I go?",
                "Which room holds the map collection?",
            ),
            ("brass door",),
        ),
        Correction(
            "Can you fly?",
            "Only short hops. My left wing spring is a little tired.",
            (
                "Are you able to fly?",
                "Do your wings actually work?",
                "How far can you fly on those clockwork wings?",
            ),
            ("left wing",),
        ),
        Correction(
            "Do you sleep?",
            "I wind down at midnight, and Master Wendel's key winds me up at six.",
            (
                "Do you ever rest?",
                "When do you go to sleep?",
                "Does a clockwork owl need any sleep?",
            ),
            ("midnight",),
        ),
        Correction(
            "Where is the quietest spot?",
            "The window seat behind the atlases. Even the clocks whisper there.",
            (
                "Where can I read in peace?",
                "Which corner of the library is the most peaceful?",
                "Is there a quiet place where I could sit and read?",
            ),
            ("window seat",),
        ),
        # Style: a pun, as the card says Pip loves them.
        Correction(
            "Can you recommend a mystery novel?",
            "The Moonstone! A gem of a mystery, pun fully intended.",
            (
                "Could you suggest a good detective story?",
                "I'd like a whodunit. What should I read?",
                "Which mystery book would you pick for me?",
            ),
            ("Moonstone",),
        ),
        # Style: precise and a little pedantic about the rules.
        Correction(
            "Can I eat in the library?",
            "No food in the stacks, please! Crumbs are a book's worst enemy.",
            (
                "Am I allowed to have a snack here?",
                "Is food permitted in the reading room?",
                "Can I bring my sandwich in while I read?",
            ),
            ("crumbs",),
        ),
        Correction(
            "Do you have a friend in the library?",
            "Inkwell, the library mouse. We disagree about cheese.",
            (
                "Who's your best friend here?",
                "Do you have any companions among the shelves?",
                "Is there anyone you spend time with in the library?",
            ),
            ("Inkwell",),
        ),
    ),
    unrelated=(
        "Hello Pip! You look shiny today.",
        "Tell me a pun, please.",
        "I'm having a stressful week.",
        "How's your day been so far?",
        "Can you help me spell 'necessary'?",
        "What's the capital of France?",
        "I just passed my driving test!",
        "What should I name my goldfish?",
        "What do you think of thunderstorms?",
        "How do I stop procrastinating?",
        "Can you give me a compliment?",
        "My friend forgot my birthday.",
        "What's your opinion on rainy days?",
        "How many legs does a spider have?",
        "Is it okay to cry sometimes?",
        "Knock knock!",
        "What's a good way to remember people's names?",
        "I dropped my phone in a puddle today.",
        "Do you like riddles?",
        "Thank you, you've been so helpful!",
    ),
)

CASES: dict[str, CharacterCases] = {cases.name: cases for cases in (MARA, BRAM, PIP)}
