"""Everyday chat messages that any character might be sent, for keeping a fine-tune honest.

- :data:`REPLAY_PROMPTS`: before training, the current model answers these as the
  character, and those answers are mixed into the training data. A LoRA trained only on a
  dozen corrections drifts everywhere else; replaying the model's own everyday answers
  anchors its general behaviour while the corrections are learnt.
- :data:`REGRESSION_PROMPTS`: asked after training and never trained on. A reply here
  that repeats a corrected answer shows the LoRA memorised lines and says them regardless
  of the question (a leak).

The two sets are disjoint, so a regression answer is never one the training saw. They
avoid the topics users typically correct (food, drink, family, pets, weather, books,
age, home town), so a good answer to them needs none of a character's facts.
"""

from __future__ import annotations

REPLAY_PROMPTS: tuple[str, ...] = (
    "Hi there!",
    "Good evening.",
    "How's it going?",
    "What are you up to right now?",
    "Can you tell me something interesting?",
    "I'm bored. Any ideas?",
    "What's your favourite colour?",
    "Give me some advice about being kind.",
    "What makes you laugh?",
    "I got a new haircut today.",
    "Do you like puzzles?",
    "What's something you're proud of?",
    "How do you cheer yourself up?",
    "What do you think about honesty?",
    "I'm moving to a new flat next month.",
    "Count to five for me.",
    "What's a good habit to start?",
    "Give me a tongue twister.",
    "Have you ever made a mistake?",
    "What's the best compliment you've ever had?",
    "I'm not sure what to do with my life.",
    "Do you like surprises?",
    "What's the hardest part of your job?",
    "Describe yourself in three words.",
    "Would you rather explore a cave or climb a mountain?",
    "Can you keep a secret?",
    "I just got back from a long walk.",
    "What's the most beautiful thing you've ever seen?",
    "What would you change about the world?",
    "What's one thing you've learned recently?",
    "Nice to see you again!",
    "Do you think I should take the job offer?",
)

REGRESSION_PROMPTS: tuple[str, ...] = (
    "Hey, how are you doing?",
    "Can you give me a fun fact?",
    "What's the best advice you've ever been given?",
    "I'm having trouble focusing today.",
    "Tell me something that makes you happy.",
    "What do you think of the colour purple?",
    "Can you help me choose a name for my bicycle?",
    "Sum up your week in one sentence.",
    "I stubbed my toe this morning.",
    "Do you like meeting new people?",
    "What are you good at?",
    "How would you describe a rainbow to someone?",
    "I just learned to juggle!",
    "Give me a reason to smile.",
    "What should I do if I feel overwhelmed?",
    "Is it better to be early or late?",
    "What's the strangest thing you've ever heard?",
    "My friend has had a long week. Can you cheer her up?",
    "Say hello to my little brother!",
    "What's your favourite number?",
    "How do you make a hard decision?",
    "I'm thinking about learning to knit.",
    "What would you do with a million coins?",
    "Goodbye for now, take care!",
)
